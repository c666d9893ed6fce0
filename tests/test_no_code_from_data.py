"""Nothing probe reads can run code: no pickle in stores, checkpoints or vector files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

import probe
import probe.geometry.maps as D
from probe.store import FeatureStore

PROBE = Path(probe.__file__).resolve().parent


class _Payload:
    """Unpickling this creates a marker file: proof that code from the data ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_umap_pickle_in_store_is_never_loaded(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    marker = tmp_path / "pwned"
    config = D.MapConfig(method="umap", seed=0, n_neighbors=10)
    points = rng.normal(size=(40, 2)).astype(np.float32)
    with FeatureStore(tmp_path / "f.h5", "a") as st:
        g = st.create_group("m/emb", dim=5, record={"model_spec": "m"}, layer="emb")
        g.append(x, [f"{i}.png" for i in range(40)], [f"{i:064x}" for i in range(40)])
        blob = pickle.dumps(_Payload(marker))
        # the layout an older probe wrote (and a crafted store imitates), with a hostile pickle
        st.save_artifact(g.name, config.cache_key(),
                         {"reducer_pickle": np.frombuffer(blob, dtype=np.uint8), "embedding": points},
                         {"features_hash": D.features_hash(x), "params": config.params(), "fit_rows": 40, "dim": 5})
        m = D.fit_map(x, method="umap", seed=0, cache=(st, g.name), n_neighbors=10)
    assert not marker.exists()
    assert m.cached and m.reducer is None
    np.testing.assert_array_equal(m.points, points)


def test_new_umap_artifacts_hold_only_numbers(tmp_path, monkeypatch):
    """What probe writes for a UMAP map: the 2-D points, no object."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    fake_points = rng.normal(size=(30, 2)).astype(np.float32)
    monkeypatch.setattr(D, "_fit_umap", lambda rows, config: ("fitted", fake_points))
    with FeatureStore(tmp_path / "f.h5", "a") as st:
        g = st.create_group("m/emb", dim=4, record={"model_spec": "m"}, layer="emb")
        g.append(x, [f"{i}.png" for i in range(30)], [f"{i:064x}" for i in range(30)])
        D.fit_map(x, method="umap", seed=0, cache=(st, g.name), n_neighbors=5)
        key = D.MapConfig(method="umap", seed=0, n_neighbors=5).cache_key()
        arrays, _ = st.load_artifact(g.name, key)
    assert set(arrays) == {"embedding"} and arrays["embedding"].dtype == np.float32


def test_no_unsafe_loader_in_probe_sources():
    """Every loader of probe refuses code: torch.load(weights_only=True), np.load(allow_pickle=False)."""
    bad = []
    for py in PROBE.rglob("*.py"):
        text = py.read_text()
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"weights_only\s*=\s*False",
                        r"\bdill\b", r"joblib\.load"):
            bad += [f"{py.name}: {pattern}" for _ in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                bad.append(f"{py.name}: torch.load without weights_only=True")
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in call.group(1):
                bad.append(f"{py.name}: np.load without allow_pickle=False")
    assert not bad, bad
