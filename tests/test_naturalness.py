"""The prior-based realism score (issue 10): textures score high, the prior's own samples and real data ~1."""

from __future__ import annotations

import shutil

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


def test_reference_errors_are_fixed_samples_cached_per_prior_and_chain(tmp_path, monkeypatch):
    import probe.cache
    from probe.diffusion.schedules import PRESETS
    from probe.naturalness import reference_errors

    monkeypatch.setattr(probe.cache, "CACHE_DIR", tmp_path)
    prior = load_prior("bundled:fashion-ddpm", "cpu")
    chain = PRESETS["none"].replace(steps=3)
    e = reference_errors(prior, chain, n=3, batch=2)
    assert e.shape == (3,) and np.isfinite(e).all() and (e > 0).all()
    cached = list((tmp_path / "realism").glob("*.npz"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0])["errors"], e)
    np.savez(cached[0], errors=np.full(3, 7.0))  # a second call reads the cache: no sampling
    assert reference_errors(prior, chain, n=3).tolist() == [7.0] * 3
    fresh = reference_errors(prior, chain, n=3, batch=3, cache=False)  # same seeds, any batch: same errors
    assert np.allclose(fresh, e, rtol=1e-4)
    reference_errors(prior, chain.replace(steps=4), n=3)  # another chain: its own entry
    assert len(list((tmp_path / "realism").glob("*.npz"))) == 2
    # other weights under the same bundled name (a retrained prior in a new release): a new entry
    import probe.diffusion.priors as priors

    shutil.copytree(priors.BUNDLED_DIR / "fashion-ddpm", tmp_path / "bundled" / "fashion-ddpm")
    monkeypatch.setattr(priors, "BUNDLED_DIR", tmp_path / "bundled")
    assert reference_errors(prior, chain, n=3).tolist() == [7.0] * 3  # same weights: the same entry
    weights = next((tmp_path / "bundled" / "fashion-ddpm").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    assert reference_errors(prior, chain, n=3).tolist() != [7.0] * 3
