"""Interpolation paths between two feature vectors (`probe interpolate`): linear or spherical."""

from __future__ import annotations

from typing import Any

import numpy as np

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


