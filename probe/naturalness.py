"""How natural a decoded image looks to the prior that drew it: a realism score for any prior.

A guided decode is evidence about a feature only if it looks like the prior's data; a low feature distance
reached with striped, adversarial textures tells the user nothing. Users bring their own priors and networks
and have no independent judge, so probe asks the prior itself: diffuse the image to a few small noise
levels t, let the prior predict the noise, and measure its error

    e(x) = mean over t and draws of ‖ε_θ(√ᾱ_t·z0 + √(1−ᾱ_t)·n, t) − n‖² / numel(z0),   z0 = encode(x)

A natural image is one the prior knows how to denoise. High-frequency texture at small t looks like noise
to the prior — it predicts part of it as noise — so off-manifold images have a larger error. The score of
an image is e(x) divided by the median e of the prior's own unguided samples (``reference``: the run's,
one per sample seed, and 32 fixed ones, :func:`reference_errors`): about 1 for images like the prior's
samples, well above 1 for textures. The noise draws
come from a fixed seed, so the score of an image is deterministic.

Calibrated on the bundled models (benchmarks/realism_auc.py, benchmarks/results/realism_auc.json, the shipped
12,022-step fashion-ddpm): 200 real test images score median 1.01 (none above 2.0), the prior's unguided
samples 1.00 (1 % above 2.0), and the striped decodes of the old ``balanced`` preset (w = 4) median 2.56
(100 % above 2.0): AUC 1.000 between them and real + unguided images; the presets' decodes score like
real images (median 0.99–1.03; with 4 candidates × 5 rounds, AUC 0.49–0.54 against real ones). On the
first, 6,141-step prior, decodes at w = 1 sat in between (median 1.54, 7 % above 2.0). Small noise levels
separate best: at t/T ≥ 0.1 real images with fine detail (prints, knits) already score up to 2.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probe.cache import keyed_path, load_arrays, save_arrays
from probe.diffusion.priors import Prior, weights_digest
from probe.diffusion.schedules import GuidanceConfig

OFF_MANIFOLD = 2.0  # realism score above which a decode is flagged as off the prior's manifold


@dataclass(frozen=True)
class RealismConfig:
    """Noise levels (as fractions of the prior's T) and draws of the denoising-error probe.

    Small t only: at large t every image is mostly noise and the prior's error says little about the
    image's fine structure, which is where adversarial textures live."""

    levels: tuple[float, ...] = (0.01, 0.02, 0.05)
    draws: int = 2
    seed: int = 0
    batch_size: int = 64


@torch.no_grad()
def denoising_error(prior: Prior, images01: torch.Tensor, config: RealismConfig = RealismConfig()) -> np.ndarray:
    """e(x) per image (see the module docstring) for images [B, C, H, W] in [0, 1] at the prior's size."""
    T = prior.num_train_timesteps
    ts = sorted({min(T - 1, max(1, round(f * T))) for f in config.levels})
    out = []
    for lo in range(0, len(images01), config.batch_size):
        x = images01[lo:lo + config.batch_size].to(prior.device).float() * 2 - 1
        z0 = prior.encode(x)
        gen = torch.Generator("cpu").manual_seed(config.seed)
        err = torch.zeros(len(z0), device=z0.device)
        for t in ts:
            a = float(prior.alphas_cumprod[t])
            for _ in range(config.draws):
                n = torch.randn(z0.shape, generator=gen).to(z0.device)
                eps = prior.eps(a ** 0.5 * z0 + (1 - a) ** 0.5 * n, t)
                err += (eps - n).pow(2).flatten(1).mean(dim=1)
        out.append((err / (len(ts) * config.draws)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


REFERENCE_SAMPLES = 32  # fixed unguided samples in every run's realism reference
REFERENCE_SEED = 1_000_003  # their seeds: REFERENCE_SEED + k, apart from the seeds users pick


def reference_errors(prior: Prior, chain: GuidanceConfig, n: int = REFERENCE_SAMPLES, batch: int = 32,
                     config: RealismConfig = RealismConfig(), cache: bool = True) -> np.ndarray:
    """Denoising errors of ``n`` fixed unguided samples of ``prior`` on ``chain``'s timesteps (an unguided
    config, e.g. ``GuidanceConfig.baseline()``): the part of every run's realism reference that does not
    depend on the run.

    Why: the run's own unguided samples are one per sample seed, and a walk decodes every point with the
    same seeds, so with ``--samples 1`` the reference was one image. The denoising error of a plain
    T-shirt is far below that of a printed bag, so a reference of one plain sample flagged clean decodes
    off-manifold (4 of 5 points of a Fashion-MNIST walk, realism 2.1) and one detailed sample hid
    textures. A median over 32 more samples is stable to a few per cent. Computed once per prior, chain and
    realism setting, cached under the probe cache folder (keyed by a digest of the prior's weights)."""
    from probe.diffusion.sampler import sample

    path = keyed_path("realism", {"version": 2, "prior": prior.spec, "weights": weights_digest(prior.spec),
                                  "chain": chain.to_dict(), "n": n, "seed": REFERENCE_SEED,
                                  "realism": [list(config.levels), config.draws, config.seed]})
    hit = load_arrays(path) if cache else None
    if hit is not None:
        return hit["errors"]
    seeds = [REFERENCE_SEED + k for k in range(n)]
    images = [sample(prior, None, None, seeds[lo:lo + batch], chain).final_images for lo in range(0, n, max(1, batch))]
    out = denoising_error(prior, torch.cat(images), config) if images else np.zeros(0)  # one call: same draws
    if cache:
        save_arrays(path, errors=out)
    return out


def realism_scores(errors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Errors relative to the median error of the reference images (the prior's unguided samples);
    NaN when there is no reference."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0 or not np.isfinite(reference).any():
        return np.full(len(errors), np.nan)
    return np.asarray(errors, dtype=np.float64) / max(float(np.nanmedian(reference)), 1e-12)


def off_manifold(scores: Sequence[float], threshold: float = OFF_MANIFOLD) -> np.ndarray:
    """Which scores flag an image as off the prior's manifold (NaN scores never do)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isfinite(s), s > threshold, False)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    p = np.asarray(positive, dtype=np.float64)[:, None]
    n = np.asarray(negative, dtype=np.float64)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())
