"""How far perturb walks along each direction: the data's own spread, not a fixed number of σ.

Along a direction v_k the stored features' projections are rarely Gaussian: PC1 of Fashion-MNIST is
bimodal (tops vs footwear) and heavy-tailed, so ±3σ from a base lands where no image's feature lies,
points the prior cannot reach (issue 25: distance 15–48 at ±2–3σ against 0.3–2 at the centre, decoded as
busy textures). The default range (``--scales data``) instead moves the base along v_k to where the
projections of the stored features *nearest the base* have their 1st, 10th, 50th, 90th and 99th
percentiles. Every column is then a place real data near the base occupies along that direction.

Why the base's neighbours and not the whole set: a walk changes one coordinate of the base. The whole set's
1st–99th percentile along a global direction spans other clusters (Fashion-MNIST's PC1 runs from tops to
footwear), and a shirt's feature moved to the footwear end of PC1 is neither a shirt's nor a shoe's: the
decodes at P90/P99 were textures, flagged off-manifold (3 of 5 columns on the medoid's walk, measured).
The neighbours' spread is how far the data itself varies along v_k around this image
(``local_neighbours``: 10 % of the set, at least 50). Returned as scales in units of std_k, so the targets
are ``base + scale_kj · std_k · v_k`` as for fixed scales, with a different scale per direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DATA_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 50.0, 90.0, 99.0)
DATA = "data"  # the --scales value that asks for these
NEIGHBOUR_SHARE = 0.1  # the base's neighbourhood: this share of the set ...
MIN_NEIGHBOURS = 50  # ... but at least this many rows (or the whole set when it is smaller)


def local_neighbours(n_rows: int) -> int:
    """How many of a set's rows nearest the base define the data's range around it."""
    return min(n_rows, max(MIN_NEIGHBOURS, int(round(NEIGHBOUR_SHARE * n_rows))))


def is_data(scales: object) -> bool:
    return isinstance(scales, str) and scales.strip().lower() == DATA


def data_scales(features: np.ndarray, base: np.ndarray, vectors: np.ndarray, std: np.ndarray,
                percentiles: Sequence[float] = DATA_PERCENTILES, neighbours: int | None = None) -> np.ndarray:
    """Scales [K, S] (std units) that put the base's projection on v_k at each percentile of the features'
    (of the ``neighbours`` rows nearest the base, squared L2; None = every row)."""
    x = np.asarray(features, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    if neighbours is not None and neighbours < len(x):
        d = ((x - b[None]) ** 2).sum(1)
        x = x[np.argpartition(d, neighbours - 1)[:neighbours]]
    v = np.asarray(vectors, dtype=np.float64)
    proj = (x - b[None]) @ v.T  # [N, K]: offsets from the base
    q = np.percentile(proj, list(percentiles), axis=0).T  # [K, S]
    return q / np.maximum(np.asarray(std, dtype=np.float64), 1e-12)[:, None]


def scale_at(scales: Sequence[float] | np.ndarray, k: int, j: int) -> float:
    """Scale of direction ``k``, column ``j``: shared (1-D) or per direction (2-D)."""
    s = np.asarray(scales, dtype=np.float64)
    return float(s[k, j] if s.ndim == 2 else s[j])


def column_labels(scales: Sequence[float] | np.ndarray, percentiles: Sequence[float] | None) -> list[str]:
    s = np.asarray(scales)
    if s.ndim == 2:
        return [f"P{p:g}" for p in (percentiles or DATA_PERCENTILES)]
    return [f"{float(x):+g}σ" for x in s]
