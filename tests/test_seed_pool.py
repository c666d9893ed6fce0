"""The seed pool: candidates start from the prior's unguided samples whose features lie closest to the target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probe.cache
from probe import seed_pool as SP
from probe.diffusion import sampler as S
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import UsageError
from probe.targets import encode_images01, feature_dim, vector_target
from probe.workflows.decode.pipeline import DecodeSettings, decode_targets
from tests.tiny_diffusion import tiny_encoder, tiny_pixel_prior

torch.set_num_threads(1)

CFG = GuidanceConfig(name="test", steps=4, rounds=2, early_rounds=1, early_steps=2, update="ddim", candidates=2,
                     pool=6)


@pytest.fixture()
def cached(tmp_path, monkeypatch):
    monkeypatch.setattr(probe.cache, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def test_assign_gives_each_sample_interleaved_ranks_of_its_target():
    # pool features on a line: distances from a target at x are |x - p|, so the ranking is known
    pool = SP.SeedPool(seeds=np.arange(100, 108), features=np.arange(8, dtype=np.float32)[:, None])
    got = pool.assign(np.array([[0.0], [0.0], [7.2]]), samples=[0, 1, 0], n_samples=2, k=3)
    assert got == [[100, 102, 104], [101, 103, 105], [107, 105, 103]]
    assert sorted(got[0] + got[1]) == list(range(100, 106))  # the samples of a target share no seed
    with pytest.raises(UsageError, match="--pool 8 is too small for 3 sample.s. x 3 .* needs at least 9"):
        pool.assign(np.zeros((1, 1)), samples=[0], n_samples=3, k=3)


def test_cosine_ranking_ignores_the_feature_norm():
    # a target along x: by squared distance the short vector near the origin wins, by cosine the long one on x
    pool = SP.SeedPool(seeds=np.arange(3), features=np.array([[10.0, 0.0], [0.5, 0.5], [2.9, 3.1]], np.float32))
    target = np.array([[1.0, 0.0]])
    assert pool.ranks(target).tolist() == [[1, 2, 0]] and pool.ranks(target, "cosine").tolist() == [[0, 1, 2]]
    assert pool.assign(target, [0], 1, 1, "cosine") == [[0]]
    assert CFG.replace(pool_rank="cosine").to_dict()["pool_rank"] == "cosine" and "pool_rank" not in CFG.to_dict()
    with pytest.raises(UsageError, match="--pool-rank must be one of l2, cosine"):
        CFG.replace(pool_rank="dot")


def test_pool_setting_is_validated_and_left_out_of_old_records():
    with pytest.raises(UsageError, match="--pool must be 0 .* between --candidates \\(4\\)"):
        CFG.replace(candidates=4, pool=3)
    with pytest.raises(UsageError, match="--pool"):
        CFG.replace(pool=-1)
    assert "pool" not in CFG.replace(pool=0).to_dict() and CFG.to_dict()["pool"] == 6
    assert CFG.baseline().pool == 0


def test_explicit_chain_seeds_decode_as_those_seeds_would():
    # chains given their seeds run exactly as the same seeds side by side without selection (same batch)
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    target = encode_images01(enc, torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    cfg = CFG.replace(pool=0, early_steps=4)  # the selection after the last step
    a = S.sample(prior, enc, target.expand(2, -1), [0, 0], cfg, chain_seeds=[[11, 12], [13, 14]])
    plain = S.sample(prior, enc, target.expand(4, -1), [11, 12, 13, 14], cfg.replace(candidates=1))
    rows = torch.arange(2) * 2 + a.candidate
    assert a.candidate.tolist() == plain.final_distance.view(2, 2).argmin(dim=1).tolist()
    assert torch.equal(a.final_images, plain.final_images[rows])
    assert a.noise_seed.tolist() == [[11, 12, 13, 14][int(r)] for r in rows]
    with pytest.raises(UsageError, match="chain_seeds must give 2 seed"):
        S.sample(prior, enc, target, [0], cfg, chain_seeds=[[1]])


def test_pool_images_are_the_baseline_samples_of_the_pool_seeds_and_resume(cached, monkeypatch):
    prior = tiny_pixel_prior()
    imgs = SP.pool_images(prior, CFG, 3, batch=2)
    ref = S.sample(prior, None, None, SP.pool_seeds(3), CFG.baseline()).final_images
    assert imgs.dtype == np.uint8 and imgs.shape == (3, 1, 16, 16)
    assert np.array_equal(imgs, (ref * 255).round().to(torch.uint8).numpy())
    drawn = []
    real = SP.sample
    monkeypatch.setattr(SP, "sample", lambda *a, **k: (drawn.append(list(a[3])), real(*a, **k))[1])
    # a pool of n is the first n of a larger one: a 5-pool reads the 3 drawn back and draws the other 2
    five = SP.pool_images(prior, CFG, 5, batch=2)
    assert drawn == [SP.pool_seeds(5)[3:5]] and np.array_equal(five[:3], imgs)
    assert np.array_equal(SP.pool_images(prior, CFG, 2), imgs[:2]) and len(drawn) == 1  # nothing drawn
    # a run stopped after its first chunk left 2 images: the rest is drawn chunk by chunk, the same images
    entry = probe.cache.keyed_path("pool-images", SP.pool_key(prior, CFG))
    probe.cache.save_arrays(entry, images=five[:2])
    drawn.clear()
    assert np.array_equal(SP.pool_images(prior, CFG, 5, batch=2), five)
    assert drawn == [SP.pool_seeds(5)[2:4], SP.pool_seeds(5)[4:]]
    # another chain (timesteps) is another pool
    assert SP.pool_key(prior, CFG.replace(steps=5)) != SP.pool_key(prior, CFG)
    assert SP.pool_key(prior, CFG.replace(pool=6, candidates=1)) == SP.pool_key(prior, CFG)


def test_decode_with_a_pool_starts_each_sample_from_its_closest_pool_seeds(tmp_path, cached):
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    pool_imgs = SP.pool_images(prior, CFG, 6)
    feats = encode_images01(enc, torch.from_numpy(pool_imgs).float() / 255).numpy()
    # targets: the features of pool samples 4 and 1, so their own seeds rank first
    targets = [vector_target(feats[4], "a", "test", feature_dim(enc)),
               vector_target(feats[1], "b", "test", feature_dim(enc))]
    out = tmp_path / "out"
    decode_targets(prior, enc, targets, out, DecodeSettings(samples=2, batch_size=4, config=CFG))
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    pool = SP.seed_pool(prior, enc, CFG)
    for r, tv in zip(recs, [0, 0, 1, 1]):
        want = pool.assign(feats[[4, 1][tv]][None], [r["sample"]], 2, 2)[0]
        assert r["noise_seed"] == want[r["candidate"]]
    assert recs[0]["noise_seed"] == SP.POOL_SEED + 4 or recs[0]["candidate"] == 1
    assert len({r["noise_seed"] for r in recs[:2]}) == 2
    assert (cached / "pool-images").is_dir() and (cached / "pool-features").is_dir()


def test_a_bundled_prior_s_shipped_pool_is_used_only_when_drawn_with_the_same_key(tmp_path, cached, monkeypatch):
    import dataclasses

    prior = dataclasses.replace(tiny_pixel_prior(), spec="bundled:tiny")
    import probe.diffusion.priors

    for module in (SP, probe.diffusion.priors):  # where the shipped pool and the weights digest look
        monkeypatch.setattr(module, "BUNDLED_DIR", tmp_path / "bundled")
    folder = tmp_path / "bundled" / "tiny"
    folder.mkdir(parents=True)
    key = SP.pool_key(prior, CFG)
    fake = np.full((4, 1, 16, 16), 7, np.uint8)  # not what the prior draws: proves where they came from
    probe.cache.save_arrays(folder / SP.SHIPPED_POOL, images=fake, key=np.asarray(json.dumps(key)))
    assert np.array_equal(SP.pool_images(prior, CFG, 3), fake[:3])
    other = CFG.replace(steps=5)  # another chain: the shipped pool does not apply, the pool is drawn
    assert not (SP.pool_images(prior, other, 2) == 7).all()
    (folder / "unet.safetensors").write_bytes(b"retrained")  # other weights: a new key, the shipped pool is stale
    assert SP.pool_key(prior, CFG) != key and not (SP.pool_images(prior, CFG, 1) == 7).all()


def test_with_a_pool_only_the_kept_round_draws_from_the_chain_s_own_generator():
    # the kept z_{t_prev} of each step uses the chain generator's next draw, as the unguided pool sample does;
    # the rounds a step does not keep draw from the recurrence generator
    prior = tiny_pixel_prior()
    cfg = CFG.replace(pool=0)
    ts = cfg.timesteps(prior.num_train_timesteps)
    at = S._Chain(prior, cfg, ts, prior.alphas_cumprod, 1)
    z = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    own, rec = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    before = own.get_state().clone(), rec.get_state().clone()
    S.denoise_step(prior, z, eps, at, cfg, [own], False, [rec])  # a round that is not kept
    assert torch.equal(own.get_state(), before[0]) and not torch.equal(rec.get_state(), before[1])
    kept = S.denoise_step(prior, z, eps, at, cfg, [own], True, [rec])
    plain = S.denoise_step(prior, z, eps, at, cfg, [torch.Generator().manual_seed(5)], True)
    assert torch.equal(kept.prev_sample, plain.prev_sample)  # the kept round: the chain's first draw


def test_the_pooled_preset_and_bad_pool_options_from_the_cli(run_cli, tmp_path):
    from probe.diffusion.schedules import PRESETS

    pooled, balanced = PRESETS["pooled"], PRESETS["balanced"]
    assert pooled.pool == 2048 and pooled.candidates == 1 and pooled.grad_min_weight == 0.25
    assert pooled.evaluations(1000) == 202 and balanced.evaluations(1000) == 642
    assert pooled.baseline() == balanced.baseline().replace(name="pooled/baseline")  # the same unguided reference
    vec = tmp_path / "v.npy"
    np.save(vec, np.zeros(256, np.float32))  # fashion-cnn's embedding
    res = run_cli("decode", "--vector", str(vec), "-m", "bundled:fashion-cnn", "--pool", "3", "-o", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--pool must be 0 (off) or between --candidates (48)" in res.output
    res = run_cli("decode", "--vector", str(vec), "-m", "bundled:fashion-cnn", "--schedule", "pooled", "--samples",
                  "3000", "-o", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--pool 2048 is too small for 3000 sample(s)" in res.output
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def rule_decoder(prior, enc, rule, names: list):
    """decode(out) -> the preset a rule schedule picked there (manifest ``settings.name``), one sample of one
    zero target; each run's plan-line schedule is appended to ``names``."""
    target = [vector_target(np.zeros(feature_dim(enc), np.float32), "a", "test", feature_dim(enc))]
    settings = DecodeSettings(samples=1, batch_size=4, config=rule, baseline=False, realism=False, sheet=False)

    def decode(out):
        decode_targets(prior, enc, target, out, settings, on_event=lambda e: e.phase == "start" and names.append(
            e.plan["schedule"]))
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["settings"]["name"]
    return decode


def test_auto_uses_the_pool_only_where_it_is_at_hand_and_a_resumed_folder_keeps_its_choice(tmp_path, cached):
    from probe.diffusion.schedules import AutoSchedule, schedule

    prior, enc = tiny_pixel_prior(), tiny_encoder()
    over = {"steps": 4, "rounds": 2, "early_steps": 2, "candidates": 1, "pool": 6}
    auto = schedule("auto", **over)
    assert isinstance(auto, AutoSchedule) and [c.name for c in auto.choices] == ["data", "pooled", "balanced"]
    assert {c.pool for c in auto.choices} == {6}  # the overrides reach every choice
    pooled = auto.choices[1]
    names = []
    decode = rule_decoder(prior, enc, auto, names)

    # the tiny prior's training data is unknown to probe: no data start; no pool drawn yet either
    assert not SP.pool_at_hand(prior, pooled)  # nothing drawn yet: the fallback, and nothing drawn by it
    assert decode(tmp_path / "first") == "balanced" and names == ["auto: balanced"]
    assert SP.pool_at_hand(prior, pooled)  # the fallback's --pool 6 drew the pool (this chain, these weights)
    assert decode(tmp_path / "second") == "pooled" and names[-1] == "auto: pooled"
    assert decode(tmp_path / "first") == "balanced"  # resumed: the folder's own choice, not a refusal
    with pytest.raises(UsageError, match="between --candidates \\(48\\).*--schedule auto falls back to balanced"):
        schedule("auto", pool=8)  # pooled takes it, balanced (48 candidates) does not: refused when built
    # --pool 0 leaves a data start nothing to search: that choice drops out, and no pool is at hand either
    assert [c.name for c in schedule("auto", pool=0).choices] == ["pooled", "balanced"]


def test_fast_follows_the_same_rule_between_pooled_fast_and_its_48_candidate_preset(tmp_path, cached):
    from probe.diffusion.schedules import PRESETS, AutoSchedule, schedule

    fast = schedule("fast")
    assert isinstance(fast, AutoSchedule) and fast.name == "fast"
    data, pooled_fast = fast.choices[:2]
    assert [c.name for c in fast.choices] == ["data", "pooled-fast", "fast"]
    assert [c.evaluations(1000) for c in fast.choices] == [116, 132, 552]  # a data start skips the first 12 steps
    assert pooled_fast == PRESETS["pooled"].replace(name="pooled-fast", late_rounds=6)  # pooled, 6 late rounds
    assert data == pooled_fast.replace(name="data", pool=4096, data_start=0.571) == schedule("auto").choices[0]
    assert [c.pool for c in schedule("fast", pool=0).choices] == [0, 0]  # --pool 0: the 48 candidates
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    over = {"steps": 4, "rounds": 2, "early_steps": 2, "late_steps": 1, "candidates": 1, "pool": 6}
    rule = schedule("fast", **over)
    names = []
    decode = rule_decoder(prior, enc, rule, names)

    assert decode(tmp_path / "first") == "fast" and names == ["fast"]  # no pool yet: the plain preset
    assert decode(tmp_path / "second") == "pooled-fast" and names[-1] == "fast: pooled-fast"
    with pytest.raises(UsageError, match="--schedule fast falls back to fast"):
        schedule("fast", pool=8)
