"""The prior-based realism score (issue 10): textures score high, the prior's own samples and real data ~1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.diffusion.priors import load_prior
from probe.naturalness import OFF_MANIFOLD, RealismConfig, auc, denoising_error, off_manifold, realism_scores

torch.set_num_threads(1)


def test_scores_auc_and_flags_on_known_numbers():
    s = realism_scores(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert s.tolist() == [0.5, 1.0, 2.0]
    assert np.isnan(realism_scores(np.array([1.0]), np.array([]))).all()
    assert off_manifold([0.5, OFF_MANIFOLD + 0.1, float("nan")]).tolist() == [False, True, False]
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1], [1]) == 0.5


@pytest.mark.slow
def test_denoising_error_is_deterministic_and_separates_textures_from_data():
    prior = load_prior("bundled:fashion-ddpm", "cpu")
    gen = torch.Generator().manual_seed(0)
    # smooth blobs at the prior's size stand in for data: a garment-like bright shape on black
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-(((yy - 16) / 9) ** 2 + ((xx - 16) / 6) ** 2)).expand(4, 1, 32, 32)
    stripes = ((xx.long() % 4 < 2).float() * 0.6 + 0.2).expand(4, 1, 32, 32)
    noise = torch.rand(4, 1, 32, 32, generator=gen)
    cfg = RealismConfig(levels=(0.02, 0.1), draws=1)
    e_blob, e_stripes, e_noise = (denoising_error(prior, x, cfg) for x in (blob, stripes, noise))
    assert np.array_equal(e_blob, denoising_error(prior, blob, cfg))
    assert e_stripes.min() > 2 * e_blob.max() and e_noise.min() > 2 * e_blob.max()
    assert auc(np.r_[e_stripes, e_noise], e_blob) == 1.0


@pytest.mark.parametrize("latent", [False, True])
def test_encode_inverts_decode_for_pixel_priors_and_runs_for_latent(latent, tmp_path):
    from tests.tiny_diffusion import save_tiny_sd, tiny_pixel_prior

    prior = load_prior(str(save_tiny_sd(tmp_path / "sd")), "cpu") if latent else tiny_pixel_prior()
    x = torch.rand(2, prior.channels, prior.image_size, prior.image_size) * 2 - 1
    z = prior.encode(x)
    assert tuple(z.shape[1:]) == tuple(prior.latent_shape)
    if not latent:
        assert torch.equal(prior.decode(z), x)
    assert denoising_error(prior, (x + 1) / 2, RealismConfig(levels=(0.1,), draws=1)).shape == (2,)
