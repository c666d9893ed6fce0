"""The data start: a decode starts from the prior's training image closest to the target, noised to a step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probe.cache
import probe.reference
from probe import data_pool as DP
from probe.diffusion import sampler as S
from probe.diffusion.schedules import PRESETS, GuidanceConfig
from probe.errors import UsageError
from probe.starts import start_at_hand
from probe.targets import encode_images01, feature_dim, vector_target
from probe.workflows.decode.pipeline import DecodeSettings, decode_targets
from tests.tiny_diffusion import tiny_encoder, tiny_pixel_prior

torch.set_num_threads(1)

CFG = GuidanceConfig(name="test", steps=6, rounds=2, early_rounds=1, early_steps=0, update="ddim", candidates=1,
                     pool=8, data_start=0.5)  # linear chain t = 999, 799, 599, 400, 200, 0: starts at 400
LAST = 1e-4  # a data start at the chain's last step (t = 0)


def _data() -> np.ndarray:
    """Eight 16-px training images, each a bright square at its own place on black: easy to tell apart."""
    out = np.zeros((8, 1, 16, 16), np.uint8)
    for i in range(8):
        r, c = divmod(i, 4)
        out[i, 0, 2 + 6 * r:8 + 6 * r, 1 + 4 * c:4 + 4 * c] = 255
    return out


@pytest.fixture()
def tiny_data(tmp_path, monkeypatch):
    """The tiny prior's training data known to probe (as the bundled priors' is), and a fresh cache."""
    monkeypatch.setattr(probe.cache, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setitem(probe.reference.REFERENCE_DATA, "test:tiny-ddpm", (_data, "eight squares"))
    return _data()


def test_data_start_is_validated_counted_and_left_out_of_old_records():
    assert "data_start" not in CFG.replace(data_start=0).to_dict() and CFG.to_dict()["data_start"] == 0.5
    assert CFG.baseline().data_start == 0
    # the steps before the start are not run: 3 of 6 steps, 2 rounds each
    assert CFG.start_index(1000) == 3 and CFG.evaluations(1000) == 6
    assert CFG.replace(data_start=0).evaluations(1000) == 12
    # a noise level, not a step: the same level starts a 50-step quadratic chain at its step 12 (t = 570)
    assert CFG.replace(steps=50, spacing="quadratic", data_start=0.571).start_index(1000) == 12
    assert CFG.replace(data_start=LAST).start_index(1000) == 5
    with pytest.raises(UsageError, match="--data-start must be 0 .* below 1 with a --pool of the prior's data and "
                                         "--candidates 1"):
        CFG.replace(pool=0)
    with pytest.raises(UsageError, match="--data-start"):
        CFG.replace(data_start=1.0)
    with pytest.raises(UsageError, match="--data-start"):
        CFG.replace(candidates=2)
    with pytest.raises(UsageError, match="--data-start"):
        CFG.replace(data_start=-1)


def test_a_chain_started_from_an_image_at_the_last_step_returns_that_image():
    # at the last timestep (t = 0, alpha-bar ~ 1) the noised image is the image itself, and one DDIM step
    # to t = -1 predicts it back up to the prior's tiny noise estimate
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    x = torch.from_numpy(_data()[[5]]).float() / 127.5 - 1
    target = encode_images01(enc, (x + 1) / 2)
    cfg = CFG.replace(data_start=LAST, track_best=False)
    res = S.sample(prior, enc, target, [0], cfg, start_images=x)
    assert int(res.evaluations[0]) == cfg.evaluations(1000) == 2
    assert (res.final_images[0] - (x[0] + 1) / 2).abs().max() < 0.05
    with pytest.raises(UsageError, match="needs start_images"):
        S.sample(prior, enc, target, [0], cfg)
    with pytest.raises(UsageError, match="one start image per chain \\(1\\), not 2"):
        S.sample(prior, enc, target, [0], cfg, start_images=x.expand(2, -1, -1, -1))


def test_each_sample_starts_from_its_own_nearest_training_image(tiny_data):
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    feats = encode_images01(enc, torch.from_numpy(tiny_data).float() / 255).numpy()
    starts = DP.data_starts(prior, enc, CFG, feats[[6, 6, 2]], samples=[0, 1, 0], n_samples=2)
    _, index, pool = DP.data_pool(prior, enc, CFG.pool)
    order = index[pool.ranks(feats[[6]])[0]]
    assert starts.indices[0] == 6 and starts.indices[2] == 2  # a training image is its own nearest
    assert starts.indices[1] == int(order[1]) != 6  # sample 1 takes the next one
    assert torch.equal(starts.latents[0], torch.from_numpy(tiny_data[6]).float() / 127.5 - 1)
    assert DP.data_starts(prior, enc, CFG.replace(data_start=0), feats[:1], [0], 1) is None
    assert start_at_hand(prior, CFG)  # the data is known: --schedule auto may pick a data-start preset


def test_decode_from_a_data_start_records_the_start_image_and_keeps_its_layout(tmp_path, tiny_data):
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    feats = encode_images01(enc, torch.from_numpy(tiny_data).float() / 255).numpy()
    target = [vector_target(feats[4], "a", "test", feature_dim(enc))]
    out = tmp_path / "out"
    cfg = CFG.replace(data_start=LAST)  # started at the last step: the decode is (nearly) the start image
    decode_targets(prior, enc, target, out, DecodeSettings(samples=2, batch_size=4, config=cfg, sheet=False))
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert recs[0]["start_image"] == 4 and recs[1]["start_image"] != 4
    assert recs[0]["evaluations"] == cfg.evaluations(1000) and recs[0]["settings"]["data_start"] == LAST
    from PIL import Image

    img = np.asarray(Image.open(out / recs[0]["image"]), dtype=np.float32)
    assert np.abs(img - tiny_data[4, 0]).max() < 16  # within 16 of 255 levels of the training image


def test_data_start_on_a_prior_whose_data_is_unknown_or_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(probe.cache, "CACHE_DIR", tmp_path / "cache")
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    vec = np.zeros((1, feature_dim(enc)), np.float32)
    assert not start_at_hand(prior, CFG) and start_at_hand(prior, CFG.replace(data_start=0, pool=0))
    with pytest.raises(UsageError, match="prior 'test:tiny-ddpm' is not known to probe .*use --data-start 0"):
        DP.data_starts(prior, enc, CFG, vec, [0], 1)

    def missing():
        raise FileNotFoundError("no such dataset")
    monkeypatch.setitem(probe.reference.REFERENCE_DATA, "test:tiny-ddpm", (missing, "not installed"))
    assert not start_at_hand(prior, CFG)  # auto then falls back instead of failing
    with pytest.raises(UsageError, match="prior 'test:tiny-ddpm' is not installed"):
        DP.data_starts(prior, enc, CFG, vec, [0], 1)


def test_data_start_from_the_cli_is_refused_without_a_pool(run_cli, tmp_path):
    vec = tmp_path / "v.npy"
    np.save(vec, np.zeros(256, np.float32))  # fashion-cnn's embedding
    res = run_cli("decode", "--vector", str(vec), "-m", "bundled:fashion-cnn", "--schedule", "balanced",
                  "--data-start", "0.5", "-o", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--data-start must be 0 (off) or a noise level t/T below 1" in res.output
    assert PRESETS["pooled"].data_start == 0


def test_auto_starts_from_the_data_where_it_is_installed(tmp_path, tiny_data):
    from probe.diffusion.schedules import schedule

    prior, enc = tiny_pixel_prior(), tiny_encoder()
    # quadratic chain t = 999, 444, 111, 0: t/T = 0.2 starts at step 2
    auto = schedule("auto", steps=4, rounds=2, early_steps=2, candidates=1, pool=6, data_start=0.2)
    target = [vector_target(np.zeros(feature_dim(enc), np.float32), "a", "test", feature_dim(enc))]
    settings = DecodeSettings(samples=1, batch_size=4, config=auto, baseline=False, realism=False, sheet=False)
    decode_targets(prior, enc, target, tmp_path / "o", settings)
    rec = json.loads((tmp_path / "o" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["settings"]["name"] == "data" and rec["start_image"] in range(8)
    assert rec["evaluations"] == auto.choices[0].evaluations(1000) == 12  # steps 2 and 3 only, 6 rounds each
