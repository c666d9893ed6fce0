"""``probe decode`` end to end through the CLI group, on a tiny saved prior and timm's test network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny_diffusion import save_pixel_prior

FAST = ["--steps", "3", "--rounds", "1", "--early-steps", "0", "--late-steps", "0", "--samples", "2",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return save_pixel_prior(tmp_path_factory.mktemp("prior") / "ddpm")


def test_decode_image_target_json(run_cli, prior_dir, tiny_encoder_args, small_images, tmp_path):
    out = tmp_path / "out"
    res = run_cli("-q", "decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *FAST,
                  "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["decoded"] == 2 and summary["targets"] == 1
    rec = summary["records"][0]
    assert rec["target"]["kind"] == "image" and rec["encoder"] == "timm:test_resnet"
    assert rec["settings"]["name"] == "balanced" and rec["settings"]["steps"] == 3  # the default preset
    assert rec["settings"]["spacing"] == "quadratic" and rec["settings"]["late_steps"] == 0
    assert rec["evaluations"] == 3
    assert (out / rec["image"]).is_file() and (out / "baseline" / "s01.png").is_file()

    from probe.persistence.samples import load_decode_dir  # the reader of this directory accepts it
    assert len(load_decode_dir(out).groups) == 1

    again = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *FAST,
                    "--out", out, "--json")  # the same command resumes: nothing left to decode
    assert again.exit_code == 0 and json.loads(again.stdout)["resumed"] == 2
    other = run_cli("-q", "decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *FAST,
                    "--out", out, "--seed", "3")
    assert other.exit_code == 2 and "--overwrite" in other.stderr and len(other.stderr.strip().splitlines()) == 1


def test_decode_errors_are_one_line(run_cli, prior_dir, tiny_encoder_args, tmp_path):
    res = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, *FAST, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "nothing to decode" in res.stderr
    res = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--text", "a cat", *FAST,
                  "--out", tmp_path / "o")
    assert res.exit_code == 2 and "not a CLIP model" in res.stderr
    np.save(tmp_path / "v.npy", np.zeros(5, dtype=np.float32))
    res = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--vector", tmp_path / "v.npy", *FAST,
                  "--out", tmp_path / "o")
    assert res.exit_code == 2 and "v.npy" in res.stderr and "5 dimensions" in res.stderr
    res = run_cli("decode", "--prior", tmp_path / "no-prior", *tiny_encoder_args, "--image", tmp_path / "v.npy",
                  *FAST, "--out", tmp_path / "o")
    assert res.exit_code == 3 and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--vector", tmp_path / "v.npy",
                  "--rounds", "0", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--rounds" in res.stderr


def test_candidates_x0_cap_and_rescale_flags_reach_the_manifest(run_cli, prior_dir, tiny_encoder_args, small_images,
                                                                 tmp_path):
    out = tmp_path / "cand"
    flags = ["--steps", "3", "--rounds", "1", "--early-steps", "1", "--early-rounds", "2", "--late-steps", "0",
             "--samples", "2", "--candidates", "3", "--x0-cap", "0.25", "--rescale", "0.5", "--device", "cpu"]
    res = run_cli("-q", "decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *flags,
                  "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)["records"][0]
    assert rec["settings"]["candidates"] == 3 and rec["settings"]["x0_cap"] == 0.25
    assert rec["settings"]["rescale"] == 0.5
    assert rec["candidate"] in (0, 1, 2) and rec["evaluations"] == 3 * 2 + 2
    bad = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *flags[:-6],
                  "--candidates", "0", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "candidates" in bad.stderr
    bad = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *flags[:-4],
                  "--rescale", "2", "--out", tmp_path / "bad2")
    assert bad.exit_code == 2 and "--rescale must be in [0, 1]" in bad.stderr


def test_progress_line_reports_the_best_distance_so_far(monkeypatch):
    """The plain progress line's 'best d' never gets worse, whatever the latest call's chains reached."""
    from probe.cli.decode import DecodeProgress
    from probe.workflows.decode.pipeline import DecodeEvent

    seen = []
    bar = DecodeProgress()
    monkeypatch.setattr(bar, "start", lambda total: None)
    monkeypatch.setattr(bar, "update", lambda done, extra="": seen.append((done, extra)))
    plan = {"encoder": "e", "layers": ["x"], "prior": "p", "device": "cpu", "targets": 1, "samples": 2,
            "schedule": "fast", "evaluations": 6, "step_evaluations": [2, 2, 2], "out": "o", "baseline_batches": 0}
    bar(DecodeEvent("start", 0, 2, 0, 3, 0, 2, [], plan))
    for frac, best in ((0.2, [0.86, float("inf")]), (0.5, [18.2, 60.1]), (0.9, [0.5, 60.1])):
        bar(DecodeEvent("decode", 1, 1, 1, 3, 0, 2, best, fraction=frac))
    assert [e.split("best d ")[1] for _, e in seen] == ["0.86", "0.86", "0.5"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
