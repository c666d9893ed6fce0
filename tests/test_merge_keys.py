"""Merges keep their meaning (issue 22): shards join only when spec, weights (content hash), layer and
preprocessing agree and they hold the same groups; a merged decode folder has the images/metadata.jsonl
that a single process writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from probe.store import FeatureStore, record_mismatch

BASE = {"model_spec": "timm:test_resnet", "weights": "w.pth", "weights_sha256": "a" * 64,
        "preprocess": {"size": 32}, "keep_spatial": False, "token_pool": "cls"}


def _shard(path, rows, start, record, group="timm_test_resnet/embedding", layer="embedding"):
    with FeatureStore(path, "a") as st:
        g = st.create_group(group, dim=3, record=record, layer=layer, ordered=True)
        g.append(np.ones((rows, 3), np.float32), [f"{start + i}.png" for i in range(rows)],
                 [f"{start + i:064x}" for i in range(rows)], input_index=list(range(start, start + rows)))


@pytest.mark.parametrize("change,fragment", [
    ({"weights_sha256": "b" * 64}, "weights_sha256"),
    ({"model_spec": "timm:other"}, "model_spec"),
    ({"preprocess": {"size": 64}}, "preprocess"),
    ({"token_pool": "mean"}, "token_pool"),
], ids=["weights-hash", "spec", "preprocess", "pool"])
def test_merge_refuses_shards_of_different_networks(run_cli, tmp_path, change, fragment):
    store = tmp_path / "s.h5"
    shards = tmp_path / "s.h5.shards"
    shards.mkdir()
    _shard(shards / "0-of-2.h5", 2, 0, BASE)
    _shard(shards / "1-of-2.h5", 2, 2, {**BASE, **change})
    r = run_cli("merge", store)
    assert r.exit_code == 3, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0]
    assert (shards / "0-of-2.h5").exists() and (shards / "1-of-2.h5").exists()  # nothing lost


def test_merge_refuses_shards_holding_other_groups(run_cli, tmp_path):
    store = tmp_path / "s.h5"
    shards = tmp_path / "s.h5.shards"
    shards.mkdir()
    _shard(shards / "0-of-2.h5", 2, 0, BASE)
    _shard(shards / "1-of-2.h5", 2, 2, {**BASE, "model_spec": "timm:b"}, group="timm_b/embedding")
    r = run_cli("merge", store)
    assert r.exit_code == 3 and "merge only shards of one run" in r.stderr, r.output


def test_merge_same_run_still_works(run_cli, tmp_path):
    store = tmp_path / "s.h5"
    shards = tmp_path / "s.h5.shards"
    shards.mkdir()
    _shard(shards / "0-of-2.h5", 2, 0, BASE)
    _shard(shards / "1-of-2.h5", 2, 2, BASE)
    r = run_cli("merge", store)
    assert r.exit_code == 0, r.output
    with FeatureStore(store) as st:
        assert len(st.group()) == 4


def test_record_mismatch_none_for_same():
    assert record_mismatch(BASE, dict(BASE)) is None
    assert "layer" in record_mismatch({**BASE, "layer": "a"}, {**BASE, "layer": "b"})


def test_merged_decode_folder_has_metadata(run_cli, tmp_path, small_images):
    out = tmp_path / "out"
    for k in range(2):
        shard = out / "shards" / f"{k}-of-2"
        (shard / "images").mkdir(parents=True)
        Image.open(small_images[k]).save(shard / "images" / f"t{k}_s00.png")
        rec = {"target_id": f"t{k}", "target_index": k, "sample": 0, "image": f"images/t{k}_s00.png",
               "best_distance": 1.0, "settings": {"samples": 1, "seed": 0}}
        (shard / "manifest.jsonl").write_text(json.dumps(rec) + "\n")
    r = run_cli("merge", out)
    assert r.exit_code == 0, r.output
    meta = [json.loads(ln) for ln in (out / "images" / "metadata.jsonl").read_text().splitlines()]
    assert [m["file_name"] for m in meta] == ["t0_s00.png", "t1_s00.png"]


def test_resume_refuses_changed_target_vector(run_cli, tmp_path, tiny_ckpt):
    """A decode resumed after its target vector changed would keep samples of the old vector under the
    same name: the record carries the vector's hash and the resume refuses (exit 2)."""
    from tests.tiny_diffusion import save_pixel_prior

    prior = save_pixel_prior(tmp_path / "prior")
    vec = tmp_path / "v.npy"
    np.save(vec, np.linspace(0, 1, 96, dtype=np.float32))
    args = ["decode", "--prior", prior, "-m", "timm:test_resnet", "--weights", tiny_ckpt, "--device", "cpu",
            "--steps", "2", "-n", "1", "--no-baseline", "--vector", vec, "-o", tmp_path / "d"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "d" / "manifest.jsonl").read_text().splitlines()[0])
    assert len(rec["target"]["vector_sha256"]) == 64
    assert run_cli(*args).exit_code == 0  # same vector: resumes (nothing to do)
    np.save(vec, np.linspace(1, 0, 96, dtype=np.float32))
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "other targets" in errors[0]
