"""The on-disk cache: entries keyed by what they were computed from, written whole or not at all."""

from __future__ import annotations

import numpy as np

import probe.cache as cache


def test_keyed_entries_round_trip_and_differ_by_key(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path)
    a = cache.keyed_path("kind", {"n": 1, "spec": "x"})
    assert a == cache.keyed_path("kind", {"spec": "x", "n": 1})  # key order does not matter
    assert a != cache.keyed_path("kind", {"n": 2, "spec": "x"}) and a.parent == tmp_path / "kind"
    assert cache.load_arrays(a) is None
    cache.save_arrays(a, values=np.arange(3.0), name=np.asarray("ref"))
    got = cache.load_arrays(a)
    assert got["values"].tolist() == [0.0, 1.0, 2.0] and str(got["name"]) == "ref"
    assert [p.name for p in a.parent.iterdir()] == [a.name]  # no temporary file left behind
