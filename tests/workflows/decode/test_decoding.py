"""The decode pipeline's output directory (docs/contracts.md) on a tiny prior and encoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from probe.diffusion.schedules import GuidanceConfig
from probe.errors import UsageError
from probe.store import FeatureStore
from probe.targets import encode_images01, feature_dim, vector_target
from probe.workflows.decode import pipeline as decoding
from probe.workflows.decode.pipeline import DecodeSettings, decode_targets
from tests.tiny_diffusion import tiny_encoder, tiny_pixel_prior

torch.set_num_threads(1)

CFG = GuidanceConfig(name="test", steps=4, rounds=2, early_rounds=3, early_steps=1, update="ddim")
KEYS = {"target_id", "target_index", "sample", "seed", "image", "final_image", "baseline_image", "best_distance",
        "final_distance", "baseline_distance", "relative_distance", "cosine", "best_step", "evaluations",
        "seconds", "target", "prior", "encoder", "layer", "settings"}


@pytest.fixture(scope="module")
def setup():
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    dim = feature_dim(enc)
    vecs = encode_images01(enc, torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))).numpy()
    targets = [vector_target(vecs[0], "a", "test", dim, path_position=0.0),
               vector_target(vecs[1], "b", "test", dim, path_position=1.0)]
    return prior, enc, targets


def read_manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_output_directory_follows_the_contract(tmp_path, setup):
    prior, enc, targets = setup
    out = tmp_path / "out"
    events = []
    summary = decode_targets(prior, enc, targets, out, DecodeSettings(samples=2, batch_size=3, config=CFG,
                                                                      trajectory_every=2), on_event=events.append)
    recs = read_manifest(out)
    assert len(recs) == 4 == len(summary.records)
    assert [(r["target_id"], r["sample"], r["seed"]) for r in recs] == \
        [("a", 0, 0), ("a", 1, 1), ("b", 0, 0), ("b", 1, 1)]
    for r in recs:
        assert KEYS <= set(r) and r["path_position"] in (0.0, 1.0)
        for key in ("image", "final_image", "baseline_image", "trajectory_image"):
            assert (out / r[key]).is_file(), r[key]
        assert r["image"] == f"images/{r['target_id']}_s{r['sample']:02d}.png"
        assert r["baseline_image"] == f"baseline/s{r['sample']:02d}.png"
        assert r["relative_distance"] == pytest.approx(r["best_distance"] / r["baseline_distance"])
        assert r["evaluations"] == 3 + 3 * 2 and r["target"]["kind"] == "vector"
        assert r["settings"]["steps"] == 4 and r["settings"]["samples"] == 2
        # the saved PNG gives the recorded distance when encoded again
        img = torch.from_numpy(np.asarray(Image.open(out / r["image"]), dtype=np.float32) / 255)[None, None]
        vec = targets[r["target_index"]].vector
        assert float(((encode_images01(enc, img)[0].numpy() - vec) ** 2).sum()) == \
            pytest.approx(r["best_distance"], rel=1e-5)
    base = Image.open(out / "baseline" / "s00.png")
    assert base.size == (16, 16)
    assert (out / "contact_sheet.png").is_file()
    with FeatureStore(out / "features.h5") as st:
        g = st.group(None)
        assert len(g) == 4 and g.attrs["kind"] == "decoded" and g.attrs["model_spec"] == enc.spec
        assert g.paths == [r["image"] for r in recs]
    assert [e.phase for e in events][0] == "start" and {e.phase for e in events} == {"start", "baseline", "decode"}
    assert events[0].plan["targets"] == 2 and len(events[0].plan["step_evaluations"]) == 4
    assert summary.to_dict()["decoded"] == 4
    meta = [json.loads(line) for line in (out / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(m["file_name"] for m in meta) == sorted(p.name for p in (out / "images").glob("*.png"))
    assert [m.target_id for m in summary.records] == [r["target_id"] for r in recs]


def test_other_settings_are_refused_then_overwritten(tmp_path, setup):
    prior, enc, targets = setup
    settings = DecodeSettings(samples=1, config=CFG.replace(steps=2, early_steps=0, rounds=1))
    decode_targets(prior, enc, targets[:1], tmp_path, settings)
    again = decode_targets(prior, enc, targets[:1], tmp_path, settings)  # the same command: nothing left to do
    assert again.resumed == 1 and len(again.records) == 1
    with pytest.raises(UsageError, match=r"settings.seed=0, not 1; .*--overwrite"):
        decode_targets(prior, enc, targets[:1], tmp_path, dataclasses.replace(settings, seed=1))
    with pytest.raises(UsageError, match="other targets"):
        decode_targets(prior, enc, targets[1:], tmp_path, settings)
    decode_targets(prior, enc, targets[1:], tmp_path, DecodeSettings(samples=1, config=settings.config,
                                                                   overwrite=True))
    assert [r["target_id"] for r in read_manifest(tmp_path)] == ["b"]
    assert not (tmp_path / "images" / "a_s00.png").exists()


def test_earlier_batches_stay_valid_when_a_later_one_fails(tmp_path, setup, monkeypatch):
    prior, enc, targets = setup
    real = decoding.sample_stream

    def failing(*args, **kw):  # the queue yields the first target's two samples, then fails
        for n, item in enumerate(real(*args, **kw)):
            if n == 2:
                raise RuntimeError("boom")
            yield item

    monkeypatch.setattr(decoding, "sample_stream", failing)
    settings = DecodeSettings(samples=2, batch_size=2, config=CFG.replace(steps=2, early_steps=0, rounds=1))
    with pytest.raises(RuntimeError):
        decode_targets(prior, enc, targets, tmp_path, settings)
    recs = read_manifest(tmp_path)
    assert [r["target_id"] for r in recs] == ["a", "a"]
    assert all((tmp_path / r["image"]).is_file() for r in recs)
    with FeatureStore(tmp_path / "features.h5") as st:
        assert len(st.group(None)) == 2
    assert (tmp_path / "contact_sheet.png").is_file()


def test_bad_settings(tmp_path, setup):
    prior, enc, targets = setup
    with pytest.raises(UsageError):
        DecodeSettings(samples=0)
    with pytest.raises(UsageError):
        DecodeSettings(batch_size=0)
    with pytest.raises(UsageError, match="no targets"):
        decode_targets(prior, enc, [], tmp_path)
    bad = vector_target(np.zeros(3), "x", "short.npy", 3)
    with pytest.raises(UsageError, match="short.npy"):
        decode_targets(prior, enc, [bad], tmp_path)


def test_records_carry_the_realism_score_and_flag(tmp_path, setup, monkeypatch):
    prior, enc, targets = setup
    calls = []

    def fake_error(prior_, images, config=None):  # baseline first (reference), then each batch's best images
        calls.append(len(images))
        if len(calls) == 1:
            return np.array([10.0, 30.0])
        done = sum(calls[1:-1])  # each sample's best image as it is written
        return np.array([2.0, 10.0, 1.0, 2.0] * 2)[done:done + len(images)]

    monkeypatch.setattr(decoding, "denoising_error", fake_error)
    monkeypatch.setattr(decoding, "reference_errors", lambda prior_, chain, batch=32: np.full(32, 2.0))
    summary = decode_targets(prior, enc, targets, tmp_path / "o", DecodeSettings(samples=2, batch_size=4, config=CFG))
    # reference = median of the run's two unguided samples' errors (10, 30) and the 32 fixed ones (2.0) = 2.0:
    # two detailed unguided samples alone would have set it to 20 and hidden every texture; threshold 2.0
    assert [r.naturalness for r in summary.records] == [1.0, 5.0, 0.5, 1.0]
    assert [r.off_manifold for r in summary.records] == [False, True, False, False]
    assert calls == [2, 1, 1, 1, 1]  # the baseline, then each sample as it is written
    monkeypatch.setattr(decoding, "denoising_error", lambda prior_, images, config=None: np.full(len(images), 5.0))
    plain = decode_targets(prior, enc, targets, tmp_path / "p",
                           DecodeSettings(samples=1, config=CFG, baseline=False))
    # without the run's unguided samples the 32 fixed ones still score every decode
    assert all(r.naturalness == 2.5 and r.off_manifold is True for r in plain.records)
    off = decode_targets(prior, enc, targets, tmp_path / "q", DecodeSettings(samples=1, config=CFG, realism=False))
    assert all(r.naturalness is None and r.off_manifold is None for r in off.records)


def test_candidates_are_recorded_and_counted(tmp_path, setup):
    prior, enc, targets = setup
    cfg = CFG.replace(candidates=3)
    out = tmp_path / "cand"
    decode_targets(prior, enc, targets, out, DecodeSettings(samples=2, batch_size=4, config=cfg))
    recs = read_manifest(out)
    assert len(recs) == 4
    for r in recs:
        assert r["candidate"] in (0, 1, 2) and r["settings"]["candidates"] == 3
        assert r["evaluations"] == 3 * 3 + 3 * 2 == cfg.evaluations(1000)
        assert (out / r["image"]).is_file()
    plain = tmp_path / "plain"
    decode_targets(prior, enc, targets, plain, DecodeSettings(samples=1, batch_size=4, config=CFG))
    assert "candidate" not in read_manifest(plain)[0]


def test_batch_size_bounds_the_chains_and_grouping_draws_the_same_noise(tmp_path, setup):
    """batch_size 4 with 3 candidates: one sample per sampler call, each the chain sample() draws alone."""
    from probe.diffusion.sampler import sample

    prior, enc, targets = setup
    cfg = CFG.replace(candidates=3)
    settings = DecodeSettings(samples=2, batch_size=4, config=cfg, baseline=False)
    assert settings.samples_per_batch == 1 and DecodeSettings(batch_size=4, config=CFG).samples_per_batch == 4
    events = []
    decode_targets(prior, enc, targets, tmp_path / "g", settings, on_event=events.append)
    assert events[0].n_batches == 4 and events[0].plan["step_evaluations"] == [9, 2, 2, 2]
    rec = [r for r in read_manifest(tmp_path / "g") if r["target_id"] == "b" and r["sample"] == 1][0]
    alone = sample(prior, enc, torch.from_numpy(targets[1].vector)[None], [1], cfg)
    assert rec["candidate"] == int(alone.candidate[0]) and rec["evaluations"] == int(alone.evaluations[0])
    assert rec["best_distance"] == pytest.approx(float(alone.best_distance[0]), rel=1e-6)
    img = np.asarray(Image.open(tmp_path / "g" / rec["image"]), dtype=np.float32) / 255
    assert np.array_equal(img, alone.best_images[0, 0].numpy())
