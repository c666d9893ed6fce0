"""Loading priors from folders (DDPM and Stable Diffusion layouts) and running the latent path end to end."""

from __future__ import annotations

import pytest
import torch

from probe.diffusion import load_prior
from probe.diffusion import sampler as S
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import InputError, UsageError
from tests.tiny_diffusion import save_pixel_prior, save_tiny_sd, tiny_encoder

torch.set_num_threads(1)


def test_pixel_prior_from_folder(tmp_path):
    prior = load_prior(str(save_pixel_prior(tmp_path / "ddpm")), "cpu")
    assert not prior.is_latent and prior.latent_shape == (1, 16, 16)
    assert (prior.channels, prior.image_size, prior.num_train_timesteps) == (1, 16, 1000)
    assert prior.clip_sample  # DDPMScheduler convention of the bundled priors
    z = torch.randn(2, 1, 16, 16)
    assert torch.equal(prior.decode(z), z)
    assert prior.eps(z, 10).shape == z.shape


def test_latent_prior_end_to_end(tmp_path):
    prior = load_prior(str(save_tiny_sd(tmp_path / "sd")), "cpu")
    assert prior.is_latent and prior.latent_shape == (4, 8, 8)
    assert (prior.channels, prior.image_size) == (3, 16)
    assert prior.text_embedding.shape == (1, 77, 16) and not prior.clip_sample
    assert abs(float(prior.betas[0]) - 0.00085) < 1e-6 and abs(float(prior.betas[-1]) - 0.012) < 1e-6
    # decode keeps gradients (the sampler back-propagates through the VAE)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    prior.decode(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()

    enc = tiny_encoder(in_chans=3, size=12)  # a different input size: exercises the resize path
    with torch.no_grad():
        target = enc(torch.rand(1, 3, 16, 16))[0]
    cfg = GuidanceConfig(steps=4, rounds=2, early_rounds=3, early_steps=1, update="ddpm")
    res = S.sample(prior, enc, target, [0, 1], cfg)
    assert res.best_images.shape == (2, 3, 16, 16)
    assert res.evaluations.tolist() == [3 + 3 * 2] * 2
    assert torch.isfinite(res.best_distance).all()
    png = torch.round(res.best_images * 255) / 255
    with torch.no_grad():
        d = ((enc(png) - target) ** 2).sum(1)
    assert torch.allclose(d, res.best_distance, rtol=1e-4)


def test_missing_and_unreadable_priors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_prior(str(tmp_path / "nope"), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_prior(str(tmp_path / "empty"), "cpu")
    broken = save_pixel_prior(tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="broken"):
        load_prior(str(broken), "cpu")
    with pytest.raises(UsageError, match="bundled"):
        load_prior("bundled:nope", "cpu")
    with pytest.raises(UsageError):
        load_prior("bundled:fashion-cnn", "cpu")  # an encoder, not a prior


def test_hub_id_offline_is_one_line_input_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 20-s network timeout here
    with pytest.raises(InputError, match="Hugging Face hub") as err:
        load_prior("nobody-here/no-such-prior", "cpu")
    assert "\n" not in str(err.value)


def test_bundled_prior_resolution(tmp_path, monkeypatch):
    """bundled:NAME goes through the registry entry: missing weights name the recipe, present ones load."""
    import dataclasses

    from probe.models import bundled

    entry = bundled.BUNDLED["fashion-ddpm"]
    monkeypatch.setitem(bundled.BUNDLED, "fashion-ddpm", dataclasses.replace(entry, path=tmp_path / "missing"))
    with pytest.raises(InputError, match="train_ddpm.py"):
        load_prior("bundled:fashion-ddpm", "cpu")
    folder = save_pixel_prior(tmp_path / "fashion-ddpm")
    monkeypatch.setitem(bundled.BUNDLED, "fashion-ddpm", dataclasses.replace(entry, path=folder))
    prior = load_prior("bundled:fashion-ddpm", "cpu")
    assert prior.spec == "bundled:fashion-ddpm" and prior.latent_shape == (1, 16, 16)
