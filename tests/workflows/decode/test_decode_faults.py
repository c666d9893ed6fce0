"""A decode killed or failing in its first batch leaves a readable (or absent) features.h5, never a broken one;
one killed later keeps every finished batch in features.h5 and manifest.jsonl alike."""

from __future__ import annotations

import pytest

import probe.workflows.decode.pipeline as D
from probe.store import FeatureStore
from tests.tiny_diffusion import save_pixel_prior

FAST = ["--steps", "2", "--rounds", "1", "--early-steps", "0", "--late-steps", "0", "--no-baseline"]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return save_pixel_prior(tmp_path_factory.mktemp("prior") / "ddpm")


@pytest.mark.parametrize("fail_at", [0, 1])
def test_interrupted_decode_leaves_readable_features(fail_at, run_cli, monkeypatch, prior_dir, small_images,
                                                     tiny_encoder_args, tmp_path):
    real = D._write_batch
    calls = {"n": 0}

    def write_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise KeyboardInterrupt  # Ctrl-C while the batch's features are being written
        return real(*args, **kwargs)
    monkeypatch.setattr(D, "_write_batch", write_then_interrupt)
    out = tmp_path / "out"
    r = run_cli("decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], "--image",
                small_images[1], "-n", "1", "--batch-size", "1", *FAST, "-o", out)
    assert r.exit_code == 130
    manifest = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() else []
    assert len(manifest) == fail_at
    if (out / "features.h5").exists():
        with FeatureStore(out / "features.h5") as st:
            rows = sum(len(st.group(n)) for n in st.group_names())
        assert rows == fail_at
    else:
        assert fail_at == 0
    assert not (out / "features.h5.commit").exists()
