"""Interpolation paths between two feature vectors (`probe interpolate`): linear, spherical, or through the data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probe.errors import UsageError
from probe.geometry.features import (
    ZERO_NORM,
    PathKind,
    as_vector,
)

# Parallel / antiparallel tolerance on the angle between the two directions (radians).
_ANGLE_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# interpolation


def path_positions(steps: int) -> np.ndarray:
    """Positions t in [0, 1] of the points :func:`interpolation_path` returns (endpoints included)."""
    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (the two endpoints), got {steps}")
    return np.linspace(0.0, 1.0, steps)


def _perpendicular(u: np.ndarray) -> np.ndarray:
    """A deterministic unit vector orthogonal to ``u``: the great circle for antiparallel ends.

    Antiparallel endpoints have infinitely many shortest arcs; we pick the one through the
    coordinate axis least aligned with ``u`` so the same inputs always give the same path.
    """
    axis = np.zeros_like(u)
    axis[int(np.argmin(np.abs(u)))] = 1.0
    w = axis - (axis @ u) * u
    return w / np.linalg.norm(w)


def interpolation_path(a: Any, b: Any, steps: int, kind: PathKind = "linear") -> np.ndarray:
    """Points from ``a`` to ``b`` (both included) as a float32 array [steps, D].

    ``linear``: (1 - t) a + t b.  ``slerp``: the direction moves along the great circle between
    a/|a| and b/|b| while the norm goes linearly from |a| to |b| -- features of different norms
    would otherwise pass through a low-norm middle that no image produces.  Degenerate cases:
    a zero endpoint has no direction, so the path keeps the other one's direction (which is the
    linear path); parallel directions keep the common direction; antiparallel directions turn
    through a fixed perpendicular (see :func:`_perpendicular`); in 1-D they fall back to linear.
    """
    va = as_vector(a, "A")
    vb = as_vector(b, "B")
    if va.shape != vb.shape:
        raise UsageError(
            f"A and B have different feature dimensions ({va.shape[0]} vs {vb.shape[0]}): "
            "they must come from the same encoder and layer"
        )
    if kind not in ("linear", "slerp"):
        raise UsageError(f"unknown path kind {kind!r}: use linear or slerp")
    t = path_positions(steps)[:, None]
    linear = (1.0 - t) * va + t * vb
    if kind == "linear":
        return linear.astype(np.float32)

    na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if na <= ZERO_NORM or nb <= ZERO_NORM:
        return linear.astype(np.float32)
    ua, ub = va / na, vb / nb
    norms = (1.0 - t) * na + t * nb
    cos = float(np.clip(ua @ ub, -1.0, 1.0))
    omega = float(np.arccos(cos))
    if omega < _ANGLE_EPS:
        units = np.repeat(((ua + ub) / np.linalg.norm(ua + ub))[None, :], steps, axis=0)
    elif np.pi - omega < _ANGLE_EPS:
        if va.shape[0] == 1:
            return linear.astype(np.float32)
        w = _perpendicular(ua)
        theta = t * np.pi
        units = np.cos(theta) * ua + np.sin(theta) * w
        units[-1] = ub  # exact endpoint rather than cos(pi) * ua
    else:
        s = np.sin(omega)
        units = (np.sin((1.0 - t) * omega) / s) * ua + (np.sin(t * omega) / s) * ub
    out = units * norms
    out[0], out[-1] = va, vb  # endpoints exactly equal the inputs
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the path through the data

DATA_NEIGHBOURS = 10  # k of the k-nearest-neighbour graph a data path runs on
DATA_MAX_ROWS = 20_000  # rows a caller should pass at most (a seeded subsample): the graph costs O(N²) distances


def data_path(a: Any, b: Any, features: np.ndarray, steps: int,
              neighbours: int = DATA_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Points from ``a`` to ``b`` along the shortest path through a feature set's k-NN graph.

    A straight line between two features of different classes passes where no image's feature lies (its
    middle is half a shirt's activations and half a boot's), so its interior can only be decoded as a
    hybrid. This path instead hops between real features: the graph joins every row of ``features`` (and A
    and B) to its ``neighbours`` nearest rows (both ways), each edge weighted by its *squared* length, so
    many short hops through dense data beat one long jump across empty space; Dijkstra finds the path,
    and ``steps`` points are placed on that polyline at equal arc length (endpoints exactly A and B).
    Returns (points [steps, D] float32, the rows of ``features`` the path visits, in order). A set whose
    graph does not join A to B is a UsageError.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    va, vb = as_vector(a, "A"), as_vector(b, "B")
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if x.shape[1] != va.shape[0] or va.shape != vb.shape:
        raise UsageError(f"a data path needs A, B and the set in one feature space: A has {va.shape[0]}, B "
                         f"{vb.shape[0]} and the set {x.shape[1]} dimensions")
    path_positions(steps)
    nodes = np.concatenate([va[None], x, vb[None]]).astype(np.float32)  # 0 = A, last = B
    n = len(nodes)
    k = max(1, min(neighbours, n - 1))
    t = torch.from_numpy(nodes)
    src, dst, w = [], [], []
    for lo in range(0, n, 1024):
        d = torch.cdist(t[lo:lo + 1024], t).pow(2)
        d[torch.arange(len(d)), torch.arange(lo, lo + len(d))] = float("inf")
        val, idx = d.topk(k, dim=1, largest=False)
        src.append(np.repeat(np.arange(lo, lo + len(d)), k))
        dst.append(idx.reshape(-1).numpy())
        w.append(val.reshape(-1).double().numpy())
    src_a, dst_a, w_a = np.concatenate(src), np.concatenate(dst), np.maximum(np.concatenate(w), 1e-12)
    graph = csr_matrix((np.concatenate([w_a, w_a]), (np.concatenate([src_a, dst_a]), np.concatenate([dst_a, src_a]))),
                       shape=(n, n))
    dist, pred = dijkstra(graph, directed=False, indices=0, return_predecessors=True)
    if not np.isfinite(dist[n - 1]):
        raise UsageError(f"no path from A to B through the set's {k}-nearest-neighbour graph ({n - 2} rows): "
                         "give a larger --from set, or use --path linear")
    order = [n - 1]
    while order[-1] != 0:
        order.append(int(pred[order[-1]]))
    order = order[::-1]
    poly = nodes[order].astype(np.float64)
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    at = path_positions(steps) * arc[-1]
    out = np.empty((steps, poly.shape[1]))
    for i, s in enumerate(at):
        j = int(np.clip(np.searchsorted(arc, s, side="right") - 1, 0, len(seg) - 1))
        f = 0.0 if seg[j] == 0 else (s - arc[j]) / seg[j]
        out[i] = (1 - f) * poly[j] + f * poly[j + 1]
    out[0], out[-1] = va, vb
    visited = np.asarray(order[1:-1], dtype=np.int64) - 1  # node i is the set's row i - 1
    return out.astype(np.float32), visited
