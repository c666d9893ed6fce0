"""The naturalness judges of benchmarks/naturalness.py on cases with known answers (issue 10)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import naturalness as nat  # noqa: E402

from probe.datasets import DatasetMissing, fashion_mnist  # noqa: E402


@pytest.fixture(scope="module")
def fashion_test():
    try:
        images, labels = fashion_mnist("test")
        fashion_mnist("train")
    except DatasetMissing as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    return images, labels


@pytest.fixture(scope="module")
def judges():
    return nat.load_judges()


def test_frechet_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 8))
    assert nat.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_mean_shift_follows_the_gaussian_formula():
    # same covariance, means apart by d: FD = ‖d‖² exactly (the covariance terms cancel)
    feats = np.random.default_rng(1).normal(size=(500, 6)) @ np.diag([1, 2, 3, 0.5, 1, 4])
    for shift in (0.5, 1.0, 3.0):
        d = np.full(6, shift)
        assert nat.frechet_distance(feats, feats + d) == pytest.approx(float(d @ d), rel=1e-9)


def test_frechet_scaled_gaussians_and_sqrtm_agree():
    # N(0, I) vs N(0, s²I) in D dims: FD = D (1 − s)²; and the eigh route equals scipy's sqrtm route
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 4))
    b = 2.0 * rng.normal(size=(20000, 4))
    assert nat.frechet_distance(a, b) == pytest.approx(4 * (1 - 2) ** 2, rel=0.05)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert nat.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_frechet_stays_finite_when_n_is_below_dimension():
    rng = np.random.default_rng(3)
    fd = nat.frechet_distance(rng.normal(size=(12, 64)), rng.normal(size=(12, 64)))
    assert np.isfinite(fd) and fd > 0


def test_fd_report_matches_sample_sizes():
    rng = np.random.default_rng(4)
    ident = lambda f: f  # noqa: E731
    rep = nat.fd_report(rng.normal(size=(20, 5)), rng.normal(size=(1000, 5)), rng.normal(size=(200, 5)) + 3.0,
                        embed=ident, repeats=5)
    assert rep["n"] == 20 and rep["repeats"] == 5
    assert rep["dim"] == 5 and rep["feature_dim"] == 5 and "full_dim" not in rep  # n // 4 = 5 = D
    # decoded drawn from the real distribution: FD like real-vs-real; shifted unguided: ≈ 5·9 larger
    assert rep["decoded_vs_real"] < 2 * rep["real_vs_real"]
    assert rep["unguided_vs_real"] > 30
    assert rep["decoded_over_unguided"] < 0.2


def test_fd_report_projects_small_sets_to_few_components():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(2000, 64)) * np.linspace(3, 0.1, 64)
    rep = nat.fd_report(real[:12], real[12:], rng.normal(size=(12, 64)), embed=lambda f: f, repeats=3)
    assert rep["dim"] == 3 and rep["feature_dim"] == 64
    assert {"decoded_vs_real", "unguided_vs_real", "real_vs_real"} <= set(rep["full_dim"])
    assert nat.fd_report(real[:12], real[12:], embed=lambda f: f, repeats=3, dim=64)["dim"] == 64


def test_nn_ratio_of_heldout_images_themselves_is_one(fashion_test):
    real = fashion_test[0][:60]
    rep = nat.nn_ratio(real, real)
    assert rep["ratio"] == pytest.approx(1.0)
    assert len(rep["decoded_distances"]) == 60


def test_nn_ratio_of_noise_is_large(fashion_test):
    noise = np.random.default_rng(5).integers(0, 256, size=(20, 32, 32), dtype=np.uint8)
    assert nat.nn_ratio(noise, fashion_test[0][:60])["ratio"] > 2.0


def test_judges_score_real_test_images_at_their_recorded_accuracy(fashion_test, judges):
    images, labels = fashion_test
    idx = np.random.default_rng(6).choice(len(images), 200, replace=False)
    acc = nat.judge_accuracy(images[idx], labels[idx], judges)
    meta = json.loads((nat.JUDGE_DIR / "judges.json").read_text())
    for name in nat.JUDGE_NAMES:
        recorded = meta[name]["test_accuracy"]
        assert recorded >= 0.8
        # 200 images: binomial sd ≈ 0.025; allow 3 sd
        assert abs(acc[name] - recorded) < 0.075, (name, acc[name], recorded)
    assert acc["mean"] == pytest.approx(np.mean([acc[n] for n in nat.JUDGE_NAMES]))


def test_judges_accept_float_images_with_a_channel_axis(fashion_test, judges):
    images = fashion_test[0][:20]
    as_float = images[:, None].astype(np.float32) / 255.0
    a, b = judges.predict(images), judges.predict(as_float)
    for name in nat.JUDGE_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_allclose(judges.embed(images), judges.embed(as_float), atol=1e-6)
    assert judges.embed(images).shape == (20, 64)


def test_textured_noise_scores_near_chance(fashion_test, judges):
    # random full-frame stripes (the textures issue 10 reports), labelled with random classes
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = []
    for _ in range(200):
        theta, period, phase = rng.uniform(0, np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
        stripes.append(((0.5 + 0.5 * wave * rng.uniform(0.3, 1)) * 255).astype(np.uint8))
    labels = rng.integers(0, 10, 200)
    acc = nat.judge_accuracy(np.stack(stripes), labels, judges)
    for name in nat.JUDGE_NAMES:
        assert acc[name] < 0.25, (name, acc[name])


def test_score_images_returns_every_figure(fashion_test, judges):
    images, labels = fashion_test
    rng = np.random.default_rng(8)
    idx = np.arange(16)
    decoded = np.clip(images[idx].astype(np.float32) / 255 + rng.normal(0, 0.05, (16, 32, 32)), 0, 1)[:, None]
    unguided = rng.integers(0, 256, size=(16, 32, 32), dtype=np.uint8)
    out = nat.score_images(decoded, labels[idx], targets=images[idx], unguided=unguided,
                           real_heldout=images[1000:1400], judges=judges, repeats=3)
    assert out["n"] == 16
    for key in ("judge_accuracy", "judge_accuracy_real_targets", "judge_accuracy_ratio", "fd", "nn", "unguided",
                "per_image"):
        assert key in out
    assert set(out["judge_accuracy"]) == {*nat.JUDGE_NAMES, "mean"}
    for key in ("decoded_vs_real", "unguided_vs_real", "real_vs_real", "decoded_over_unguided", "n"):
        assert key in out["fd"]
    assert out["fd"]["decoded_vs_real"] < out["fd"]["unguided_vs_real"]
    assert out["nn"]["ratio"] < out["unguided"]["nn_ratio"]
    assert len(out["per_image"]["nn_distance"]) == 16
    assert out["judge_accuracy_ratio"]["mean"] > 0.7


@pytest.fixture(scope="module")
def emoji_ready():
    from probe.datasets import emoji_dir

    try:
        emoji_dir(fetch=False)
    except DatasetMissing as exc:
        pytest.skip(f"emoji not cached (needs 'npm pack' once): {exc}")


def test_emoji_categories_come_from_the_package_metadata(emoji_ready):
    cats = nat.emoji_categories("test")
    names = nat.emoji_category_names()
    assert len(cats) == len(nat.emoji_files("test")) and (cats >= 0).all()
    files = nat.emoji_files("test")
    smile = [i for i, f in enumerate(files) if f.name.startswith("1f60")]  # 😀… faces
    assert smile and all(names[cats[i]] == "Smileys & Emotion" for i in smile)


def test_score_emoji_on_heldout_emoji(emoji_ready):
    from probe.datasets import emoji

    real = emoji("test")
    cats = nat.emoji_categories("test")
    # a random subset: the first files in sorted order are all keycaps, not a sample of emoji
    idx = np.random.default_rng(0).choice(len(real), 12, replace=False)
    out = nat.score_emoji(real[idx], categories=cats[idx], targets=real[idx], exclude_indices=idx,
                          unguided=np.full((12, 32, 32, 3), 128, np.uint8), repeats=5)
    assert out["fd"]["n"] == 12 and out["fd"]["dim"] == 3
    assert out["fd"]["decoded_vs_real"] < out["fd"]["unguided_vs_real"]
    assert 0.5 < out["nn"]["ratio"] < 1.5
    assert out["category_accuracy"] == out["category_accuracy_real_targets"]


def test_judges_tolerate_faint_pixel_noise(fashion_test, judges):
    # decodes carry faint noise; HOG's block normalisation amplified it before the judge trained on noisy copies
    images, labels = fashion_test
    idx = np.random.default_rng(10).choice(len(images), 200, replace=False)
    noisy = np.clip(images[idx] / 255.0 + np.random.default_rng(11).normal(0, 0.05, (200, 32, 32)), 0, 1)
    acc = nat.judge_accuracy(noisy.astype(np.float32), labels[idx], judges)
    for name in nat.JUDGE_NAMES:
        assert acc[name] > 0.7, (name, acc[name])


def test_preset_score_judges_emoji_decodes_by_category(emoji_ready):
    """preset_score's emoji path reports the category judge: decodes equal to their targets score 1.0."""
    import torch
    from preset_score import images01, naturalness_figures

    from probe.diffusion.priors import load_prior
    from probe.naturalness import denoising_error

    torch.set_num_threads(1)
    held = nat._emoji_split("test")
    index = np.arange(6)
    targets = (held[index] * 255).round().astype(np.uint8) if held.dtype != np.uint8 else held[index]
    prior = load_prior("bundled:emoji-ddpm", "cpu")
    unguided = targets[::-1].copy()
    ref = denoising_error(prior, images01(unguided))
    out = naturalness_figures(targets, None, targets, index, unguided, prior, ref)
    assert out["judge_ratio"] == pytest.approx(1.0)
    assert out["judge_accuracy"]["category"] == out["judge_accuracy_real_targets"]["category"] > 0


def test_per_class_subset_keeps_the_first_k_targets_of_each_class():
    import preset_search

    labels = np.array([0, 1, 0, 2, 1, 0, 2, 1])
    assert preset_search.per_class_subset(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert preset_search.per_class_subset(labels, 1).tolist() == [0, 1, 3]
