"""Numbers that say how good a prior or a decoding is, shared by benchmarks and commands."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D] (as in FID)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise ‖x_i − y_j‖² as [N, M] (float64 to stay exact for large features)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.maximum(d, 0.0)


def retrieval_rank(decoded: np.ndarray, targets: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank (0 = nearest) of each decoded feature's own target among ``[target_i] + gallery``.

    RCDM-style faithfulness: retrieval@1 is ``(rank == 0).mean()``. The gallery holds held-out features
    that are not targets.
    """
    own = ((decoded - targets) ** 2).sum(1)
    others = squared_distances(decoded, gallery)
    return (others < own[:, None]).sum(1)
