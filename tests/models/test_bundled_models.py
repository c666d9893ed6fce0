"""The shipped models themselves: they load offline, they are what their cards say, and guidance works
with them (issue 3's interface, issue 4's "guided beats unguided on the bundled models")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probe.datasets import FASHION_CLASSES, fashion_slug
from probe.diffusion.priors import load_prior
from probe.diffusion.sampler import sample
from probe.diffusion.schedules import preset
from probe.models.registry import load_encoder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# a short guided run: enough to show guidance at work, cheap enough for a test
SHORT = preset("fast", steps=20, rounds=2, early_rounds=4, early_steps=2)


@pytest.fixture(scope="module")
def cnn():
    return load_encoder("bundled:fashion-cnn", device="cpu")


@pytest.fixture(scope="module")
def fashion_examples() -> tuple[torch.Tensor, list[int]]:
    files = sorted((EXAMPLES / "fashion").glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32)) for f in files])
    by_slug = {fashion_slug(c): c for c in range(len(FASHION_CLASSES))}
    labels = [by_slug[f.parent.name] for f in files]
    return x[:, None] / 255.0, labels


@pytest.mark.parametrize("name,channels", [("fashion-ddpm", 1), ("emoji-ddpm", 3)])
def test_bundled_priors_load_offline_and_sample_images(name, channels):
    prior = load_prior(f"bundled:{name}", "cpu")
    assert (prior.channels, prior.image_size, prior.num_train_timesteps) == (channels, 32, 1000)
    res = sample(prior, None, None, [0, 1], preset("none", steps=10))
    assert res.final_images.shape == (2, channels, 32, 32)
    assert float(res.final_images.min()) >= 0 and float(res.final_images.max()) <= 1
    assert not torch.equal(res.final_images[0], res.final_images[1])


def test_fashion_cnn_classifies_the_examples(cnn, fashion_examples):
    x, labels = fashion_examples
    with torch.no_grad():
        pred = cnn.classify(x).argmax(1).tolist()
    assert np.mean(np.array(pred) == np.array(labels)) >= 0.8


@pytest.mark.slow
def test_guided_beats_unguided_on_the_bundled_models(cnn, fashion_examples):
    prior = load_prior("bundled:fashion-ddpm", "cpu")
    x, _ = fashion_examples
    with torch.no_grad():
        targets = cnn(x[[0, len(x) - 1]])
    seeds = [3, 4]
    guided = sample(prior, cnn, targets, seeds, SHORT)
    base = sample(prior, cnn, targets, seeds, SHORT.baseline())
    assert bool((guided.best_distance < 0.5 * base.final_distance).all()), (guided.best_distance,
                                                                           base.final_distance)
