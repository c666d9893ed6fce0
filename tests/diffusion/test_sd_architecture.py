"""Stable Diffusion v1.4 at its full architecture (random values) through probe's latent path, and the
prior's compute options (bf16 autocast, gradient checkpointing) that benchmarks/sd_cost.py measures."""

from __future__ import annotations

import pytest
import torch

from probe.diffusion.architectures import SD_V1_4_UNET, SD_V1_4_VAE, fill_random, sd_v1_4_random
from probe.diffusion.priors import load_prior
from probe.diffusion.sampler import guided_round, sample
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import UsageError
from tests.tiny_diffusion import save_tiny_sd, tiny_encoder


def test_sd_v1_4_configs_have_the_published_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):  # no memory, no init: only the architecture
        unet = UNet2DConditionModel(**SD_V1_4_UNET)
        vae = AutoencoderKL(**SD_V1_4_VAE)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # CompVis/stable-diffusion-v1-4 unet
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_fill_random_gives_sane_values():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(5, 4))
    fill_random(net.to_empty(device="cpu"))
    w = net[0].weight.detach()
    assert torch.isfinite(w).all() and 0.5 < float(w.std() * 27 ** 0.5) < 2  # ~N(0, 1/fan_in)
    assert torch.equal(net[1].weight, torch.ones(8)) and torch.equal(net[0].bias, torch.zeros(8))
    fill_random(net, shared=True)  # views of one pool per fan-in: same scale, no copy
    assert 0.5 < float(net[0].weight.detach().std() * 27 ** 0.5) < 2


def test_sd_v1_4_full_architecture_end_to_end():
    """One guided evaluation of the real 860 M-parameter UNet and 84 M VAE at 64² through sample()."""
    prior = sd_v1_4_random(64, device="cpu", shared_weights=True)
    assert prior.is_latent and prior.latent_shape == (4, 8, 8) and prior.image_size == 64
    assert prior.scaling_factor == 0.18215 and not prior.clip_sample
    assert abs(float(prior.betas[0]) - 0.00085) < 1e-9 and abs(float(prior.betas[-1]) - 0.012) < 1e-9
    enc = tiny_encoder(in_chans=3, size=32)
    with torch.no_grad():
        target = enc(torch.rand(1, 3, 64, 64))[0]
    res = sample(prior, enc, target, [0], GuidanceConfig(steps=1, rounds=1, early_steps=0))
    assert res.best_images.shape == (1, 3, 64, 64) and res.evaluations.tolist() == [1]
    assert torch.isfinite(res.best_distance).all() and res.skipped.tolist() == [0]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return load_prior(str(save_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")), "cpu")


def test_checkpointing_changes_nothing_but_memory(tiny_sd):
    enc = tiny_encoder(in_chans=3, size=16)
    target = torch.randn(1, 8 * 4 * 4)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = GuidanceConfig()
    a_t = float(tiny_sd.alphas_cumprod[500])
    plain = guided_round(tiny_sd, enc, z, 500, target, cfg, abar=a_t).eps
    try:
        tiny_sd.configure(checkpoint="all")
        assert tiny_sd.unet.is_gradient_checkpointing and tiny_sd.vae.is_gradient_checkpointing
        ckpt = guided_round(tiny_sd, enc, z, 500, target, cfg, abar=a_t).eps
        tiny_sd.configure(precision="bf16", checkpoint="none")
        assert not tiny_sd.unet.is_gradient_checkpointing
        bf16 = guided_round(tiny_sd, enc, z, 500, target, cfg, abar=a_t).eps
    finally:
        tiny_sd.configure(precision="fp32", checkpoint="none")
    assert torch.allclose(ckpt, plain, atol=1e-6)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, plain)
    assert float((bf16 - plain).norm() / plain.norm()) < 0.5  # rounding to 8 bits amplifies bf16 noise
    assert tiny_sd.describe()["precision"] == "fp32"


def test_compute_options_are_validated(tiny_sd):
    with pytest.raises(UsageError, match="precision"):
        tiny_sd.configure(precision="fp8")
    with pytest.raises(UsageError, match="checkpointing"):
        tiny_sd.configure(checkpoint="encoder")
