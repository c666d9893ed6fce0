"""Feature-space geometry for `probe interpolate`, `probe perturb` and `probe map`: the shared part
(feature matrices, hashes, the artifact cache); :mod:`.paths`, :mod:`.directions` and :mod:`.maps` build on it.

Everything here works on plain ``np.ndarray`` feature rows ``[N, D]`` so that it can be tested
without a diffusion model: the commands compute *targets* (points in feature space) here and hand
them to the decoder.  The only outside dependency is the feature store, used as a cache through
the two methods of the contract (``save_artifact`` / ``load_artifact``), so fitted PCA bases and 2-D
reducers are computed once per feature set and reused -- repeated maps must agree with each other,
and PCA on a 60k-row store should not be paid for on every `perturb`.

Conventions:

* components are 1-based on the command line ("PC1" is the first principal component);
* a direction's ``std`` is the sample standard deviation (ddof=1, as sklearn's PCA) of the feature
  set projected on that unit direction, so perturbation scales read as "n standard deviations";
* errors the user can act on are raised as :class:`probe.errors.UsageError` (the request cannot
  work with this data) or :class:`probe.errors.InputError` (the data itself is unusable), each with
  one line naming the offending file/group.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Protocol

import numpy as np

from probe.errors import InputError, UsageError

PathKind = Literal["linear", "slerp"]
MapMethod = Literal["umap", "pca"]

# Below this norm a feature vector is treated as the origin (it has no direction).
ZERO_NORM = 1e-12
# Artifact keys in the store.
PCA_ARTIFACT_KEY = "pca"
MAP_ARTIFACT_PREFIX = "map"


class ArtifactStore(Protocol):
    """The part of :class:`probe.store.FeatureStore` this module needs (see docs/contracts.md)."""

    def save_artifact(
        self, name: str, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]
    ) -> None: ...

    def load_artifact(self, name: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None: ...


# (store, group name): where a fitted model of one feature set is cached.
Cache = tuple[ArtifactStore, str]


# --------------------------------------------------------------------------------------------
# helpers


def as_matrix(features: Any, source: str) -> np.ndarray:
    """Features as a finite float32 [N, D] array; NaN/inf would silently poison every fit."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"{source}: expected a feature matrix [N, D], got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise InputError(f"{source}: the features have 0 dimensions")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(x), axis=1)))
        raise InputError(f"{source}: {bad} row(s) contain NaN or infinite values")
    return x


def as_vector(v: Any, name: str) -> np.ndarray:
    x = np.asarray(v, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise UsageError(f"{name}: expected one feature vector, got shape {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: the feature vector contains NaN or infinite values")
    return x


def features_hash(features: np.ndarray) -> str:
    """SHA-1 of shape and float32 bytes: a cached fit is reused only for the very same rows."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    h = hashlib.sha1()
    h.update(repr(x.shape).encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def projection_std(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Sample std (ddof=1) of the set along each unit vector; ddof=1 matches sklearn's PCA."""
    if features.shape[0] < 2:
        return np.zeros(vectors.shape[0], dtype=np.float32)
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    proj = centred @ vectors.astype(np.float64).T
    return proj.std(axis=0, ddof=1).astype(np.float32)


def unit_rows(vectors: np.ndarray, source: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms <= ZERO_NORM)
    if zero.size:
        raise InputError(f"{source}: direction(s) {zero.tolist()} have zero length")
    return (vectors / norms[:, None]).astype(np.float32)


