"""The reach and domain checks (probe.reference) on synthetic features whose answers are known, the flags
they write into the manifest, and compare leaving flagged samples out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from probe import reference as R
from probe.manifest import SampleRecord
from probe.persistence import samples as C

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests.workflows.compare.test_compare_honesty import make_run  # noqa: E402


def cluster(n=200, d=16, seed=0):
    """Reference features on a tight cone around e0 (like one data domain seen by a network)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), dtype=np.float32)
    x[:, 0] = 10
    return x + rng.normal(0, 0.5, (n, d)).astype(np.float32)


def test_nearest_and_knn_cosine_known_answers():
    ref = np.array([[0, 0], [3, 4]], dtype=np.float32)
    assert R.nearest_sq(np.array([[3, 0]], dtype=np.float32), ref).tolist() == [9.0]
    assert R.nearest_sq(ref, ref, exclude_self=True).tolist() == [25.0, 25.0]
    assert R.nearest_sq(np.array([[3, 4]], dtype=np.float32), ref, exclude_exact=True).tolist() == [25.0]
    c = R.knn_cosine(np.array([[1, 0]], np.float32), np.array([[2, 0], [0, 5]], np.float32), k=1)
    assert c == pytest.approx([0.0])
    assert R.knn_cosine(np.array([[1, 0]], np.float32), np.array([[2, 0], [0, 5]], np.float32), k=2) == \
        pytest.approx([0.5])


def test_domain_ratio_separates_in_domain_from_out_of_domain_targets():
    ref = R.build_reference(cluster(), "synthetic")
    inside = cluster(20, seed=1)
    outside = np.zeros((5, 16), dtype=np.float32)
    outside[:, 1] = 10  # another direction: a photo's feature seen by the emoji data
    assert (ref.domain_ratio(inside) < 1).mean() >= 0.9
    assert (ref.domain_ratio(outside) > 3).all()
    assert R.out_of_domain(ref.domain_ratio(outside)).all()


def test_not_reached_whatever_the_realism():
    best = np.array([5.0, 1.0, np.nan, 3.0])
    nn = np.array([3.0, 3.0, 3.0, np.nan])
    assert R.not_reached(best, nn).tolist() == [True, False, False, False]
    assert R.reach_ratio(best[:2], nn[:2]).tolist() == pytest.approx([5 / 3, 1 / 3])


def test_target_checks_fields_and_one_warning():
    ref = R.build_reference(cluster(), "synthetic data")
    out = np.zeros(16, dtype=np.float32)
    out[1] = 10
    targets = [SimpleNamespace(vector=cluster(1, seed=3)[0]), SimpleNamespace(vector=out)]
    notes: list[str] = []
    checks = R.target_checks("bundled:x", None, targets, notes.append, reference=ref)
    assert len(notes) == 1 and "1 of 2 target(s) lie outside bundled:x's domain" in notes[0] and "--prior" in notes[0]
    near = checks.fields(0, best_distance=0.0)
    assert near["not_reached"] is False and near["out_of_domain"] is False and near["reach_ratio"] == 0.0
    far = checks.fields(1, best_distance=float(checks.nearest[1]) * 2)
    assert far["not_reached"] is True and far["out_of_domain"] is True and far["reach_ratio"] == pytest.approx(2)
    assert R.target_checks("bundled:x", None, targets[:1], notes.append, reference=ref) is not None
    assert len(notes) == 1  # in-domain targets: no warning


def test_unknown_prior_has_no_reference():
    assert R.reference_set("diffusers:somebody/else", encoder=None) is None


def test_record_flagged_combines_the_checks():
    base = {"target_id": "t", "sample": 0, "image": "images/t.png"}
    assert SampleRecord.from_dict(base).flagged is None
    rec = SampleRecord.from_dict({**base, "off_manifold": False, "naturalness": 0.6, "reach_ratio": 4.0,
                                  "not_reached": True, "domain_ratio": 1.5, "out_of_domain": True})
    assert rec.flagged is True and rec.flag_reasons == ["not_reached", "out_of_domain"]
    back = json.loads(rec.to_json())
    assert back["not_reached"] is True and back["reach_ratio"] == 4.0 and back["out_of_domain"] is True
    assert SampleRecord.from_dict({**base, "off_manifold": False, "not_reached": False}).flagged is False


def test_compare_excludes_not_reached_samples_by_default(tmp_path):
    run = make_run(tmp_path, flags={(0, 1): True})
    lines = [json.loads(x) for x in (run / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:  # realism says every sample is fine; the reach check says two were not reached
        rec["off_manifold"] = False
        rec["not_reached"] = (rec["target_index"], rec["sample"]) in {(0, 1), (2, 3)}
    (run / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ss = C.load_samples(run)
    assert [len(g.excluded) for g in ss.groups] == [1, 0, 1] and ss.off_manifold["n_flagged"] == 2
    kept = C.load_samples(run, off_manifold="keep")
    assert [len(g.paths) for g in kept.groups] == [4, 4, 4]


def test_sheets_mark_flagged_cells_in_red():
    from probe.render.sheets import FLAG_COLOUR, flag_caption, image_grid
    from probe.workflows.walks.pipeline import _flag_line

    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    sheet = np.asarray(image_grid([[white, white]], marked=[[True, False]], cell_size=64))
    red = np.all(sheet == np.array(FLAG_COLOUR, dtype=np.uint8), axis=-1)
    half = sheet.shape[1] // 2
    assert red[:, :half].any() and not red[:, half:].any()
    rec = SampleRecord.from_dict({"target_id": "t", "sample": 0, "image": "i.png", "not_reached": True,
                                  "off_manifold": False})
    assert flag_caption(rec) == "NOT REACHED" and _flag_line(rec) == "\nNOT REACHED"
    ok = SampleRecord.from_dict({"target_id": "t", "sample": 0, "image": "i.png", "not_reached": False})
    assert flag_caption(ok) == "" and _flag_line(ok) == ""


def test_decode_records_reach_and_domain_flags_and_warns_once(tmp_path, monkeypatch):
    """A tiny prior given a reference set of 16x16 images: a target that is a reference image's own feature
    is in the domain; its opposite is not and warns once; the flags land in the manifest."""
    import torch

    from probe.diffusion.schedules import GuidanceConfig
    from probe.targets import encode_images01, feature_dim, vector_target
    from probe.workflows.decode.pipeline import decode_targets
    from probe.workflows.options import DecodeSettings
    from tests.tiny_diffusion import tiny_encoder, tiny_pixel_prior

    prior, enc = tiny_pixel_prior(), tiny_encoder()
    data = (np.random.default_rng(0).random((64, 1, 16, 16)) * 255).astype(np.uint8)
    monkeypatch.setitem(R.REFERENCE_DATA, prior.spec, (lambda: data, "synthetic training images"))
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("probe.cache.CACHE_DIR", tmp_path / "cache")
    dim = feature_dim(enc)
    inside = encode_images01(enc, torch.from_numpy(data[:1]).float() / 255).numpy()[0]
    targets = [vector_target(inside, "in", "test", dim), vector_target(-10 * inside, "out", "test", dim)]
    notes: list[str] = []
    cfg = GuidanceConfig(name="test", steps=3, rounds=1, early_rounds=1, early_steps=0, update="ddim")
    summary = decode_targets(prior, enc, targets, tmp_path / "o", DecodeSettings(samples=1, config=cfg),
                             on_warning=notes.append)
    assert len(notes) == 1 and "1 of 2 target(s) lie outside" in notes[0]
    recs = {r.target_id: r for r in summary.records}
    assert recs["in"].out_of_domain is False and recs["out"].out_of_domain is True and recs["out"].flagged
    for r in recs.values():
        assert r.reach_ratio is not None and r.not_reached == (r.reach_ratio > 1)
    # the target that *is* a reference image's feature is compared with the next real image, not itself
    ref = R.reference_set(prior.spec, enc)
    assert ref.nearest(inside[None])[0] > 0
    line = json.loads((tmp_path / "o" / "manifest.jsonl").read_text().splitlines()[0])
    assert {"reach_ratio", "not_reached", "domain_ratio", "out_of_domain"} <= set(line)
