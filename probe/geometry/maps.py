"""2-D maps of a feature set (`probe map`): UMAP or PCA, cached in the store, inverted to targets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probe.errors import UsageError
from probe.geometry.features import (
    MAP_ARTIFACT_PREFIX,
    Cache,
    MapMethod,
    as_matrix,
    features_hash,
)

# --------------------------------------------------------------------------------------------
# 2-D maps


@dataclass(frozen=True)
class MapConfig:
    """Reducer settings; together with the feature hash they key the cached fit."""

    method: MapMethod = "umap"
    seed: int = 0
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"

    def params(self) -> dict[str, Any]:
        if self.method == "pca":
            return {"method": "pca", "seed": self.seed}
        return {
            "method": "umap",
            "seed": self.seed,
            "n_neighbors": self.n_neighbors,
            "min_dist": self.min_dist,
            "metric": self.metric,
        }

    def cache_key(self) -> str:
        blob = json.dumps(self.params(), sort_keys=True).encode()
        return f"{MAP_ARTIFACT_PREFIX}-{self.method}-{hashlib.sha1(blob).hexdigest()[:12]}"


@dataclass
class FeatureMap:
    """A fitted 2-D map of a feature set: forward/inverse transforms and the fitted points.

    For PCA the reducer is the pair (mean, components) and the inverse is the exact linear map
    back onto the 2-D principal plane.  For UMAP it is the fitted ``umap.UMAP`` object and the
    inverse is UMAP's own ``inverse_transform``, which only means something inside the convex
    hull of the embedded points; :meth:`inverse_transform` therefore first clamps points onto
    that hull (see :meth:`clamp_to_hull`).

    A UMAP loaded from the cache has only its points (the fitted object would need pickle, and
    nothing probe reads may run code); the first ``transform``/``inverse_transform`` refits it on
    ``rows`` with the same seed and parameters, which is deterministic.
    """

    method: MapMethod
    config: MapConfig
    points: np.ndarray  # [N, 2] embedding of the fitted rows
    reducer: Any
    dim: int
    features_hash: str
    cached: bool = False
    rows: np.ndarray | None = field(default=None, repr=False)  # the fitted rows, for a UMAP refit

    def _umap(self) -> Any:
        if self.reducer is None:
            if self.rows is None:
                raise UsageError("this UMAP map was loaded without its rows; it cannot transform points")
            self.reducer, self.points = _fit_umap(self.rows, self.config)
        return self.reducer

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the fitted points."""
        p = self.points
        return (float(p[:, 0].min()), float(p[:, 0].max()), float(p[:, 1].min()), float(p[:, 1].max()))

    def transform(self, features: Any, source: str = "features") -> np.ndarray:
        """Map new feature rows [n, D] to [n, 2] with the fitted reducer."""
        x = as_matrix(features, source)
        if x.shape[1] != self.dim:
            raise UsageError(f"{source} have {x.shape[1]} dims but the map was fitted on {self.dim}")
        if self.method == "pca":
            mean, comps = self.reducer
            return ((x - mean) @ comps.T).astype(np.float32)
        return np.asarray(self._umap().transform(x), dtype=np.float32)

    def clamp_to_hull(self, points: Any) -> np.ndarray:
        """Points outside the convex hull of the fitted points moved to its nearest boundary point.

        UMAP's inverse_transform locates each point in a Delaunay triangle of the embedding; a
        point outside every triangle would silently get an unrelated one.
        """
        from scipy.spatial import ConvexHull, Delaunay

        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        emb = self.points.astype(np.float64)
        tri = Delaunay(emb, qhull_options="QJ")
        outside = tri.find_simplex(p) < 0
        if not np.any(outside):
            return p.astype(np.float32)
        hull = ConvexHull(emb, qhull_options="QJ")
        verts = emb[hull.vertices]
        starts, ends = verts, np.roll(verts, -1, axis=0)
        centroid = emb.mean(axis=0)
        out = p.copy()
        seg = ends - starts
        seg_len2 = np.maximum(np.einsum("ij,ij->i", seg, seg), 1e-30)
        for i in np.flatnonzero(outside):
            t = np.clip(np.einsum("ij,ij->i", p[i] - starts, seg) / seg_len2, 0.0, 1.0)
            proj = starts + t[:, None] * seg
            best = proj[int(np.argmin(np.linalg.norm(proj - p[i], axis=1)))]
            out[i] = best + 1e-6 * (centroid - best)  # a hair inside so find_simplex succeeds
        return out.astype(np.float32)

    def inverse_transform(self, points: Any) -> np.ndarray:
        """Feature vectors [n, D] for 2-D map points [n, 2] (decode targets for `map --grid`)."""
        p = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        if not np.all(np.isfinite(p)):
            raise UsageError("map points contain NaN or infinite values")
        if self.method == "pca":
            mean, comps = self.reducer
            return (p @ comps + mean).astype(np.float32)
        reducer = self._umap()  # before clamping: a refit sets the points the hull is made of
        return np.asarray(reducer.inverse_transform(self.clamp_to_hull(p)), dtype=np.float32)

    def grid_points(self, rows: int, cols: int, margin: float = 0.05) -> np.ndarray:
        """Row-major grid [rows*cols, 2] over the bounds; row 0 is the top (largest y) as on the plot.

        ``margin`` shrinks the box by that fraction of its extent on each side, keeping the grid's
        corners near the data rather than in empty space.
        """
        if rows < 1 or cols < 1:
            raise UsageError(f"--grid needs at least 1×1 cells, got {rows}×{cols}")
        if not 0.0 <= margin < 0.5:
            raise UsageError(f"grid margin must be in [0, 0.5), got {margin}")
        xmin, xmax, ymin, ymax = self.bounds
        dx, dy = (xmax - xmin) * margin, (ymax - ymin) * margin
        xs = np.linspace(xmin + dx, xmax - dx, cols) if cols > 1 else np.array([(xmin + xmax) / 2])
        ys = np.linspace(ymax - dy, ymin + dy, rows) if rows > 1 else np.array([(ymin + ymax) / 2])
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def parse_grid(text: str) -> tuple[int, int]:
    """'4x6' / '4×6' / '4X6' -> (4, 6) rows, cols."""
    norm = str(text).strip().lower().replace("×", "x")
    parts = norm.split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        rows, cols = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(f"--grid: cannot read {text!r}; use ROWSxCOLS, e.g. 5x5") from None
    if rows < 1 or cols < 1:
        raise UsageError(f"--grid: rows and columns must be positive, got {text!r}")
    return rows, cols


def _min_rows(config: MapConfig) -> int:
    return config.n_neighbors + 1 if config.method == "umap" else 3


def fit_map(
    features: Any,
    method: MapMethod = "umap",
    seed: int = 0,
    cache: Cache | None = None,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    source: str = "feature set",
) -> FeatureMap:
    """Fit (or load from the cache) a 2-D map of ``features``.

    The cache artifact is keyed by method and parameters; it also records the features' hash,
    and a fit on different rows replaces it.  Only plain arrays are stored, never a pickle (a
    store is data; reading it must not run code): PCA as mean and components, UMAP as its 2-D
    points, refitted deterministically (same seed and parameters) when a transform is needed.
    """
    if method not in ("umap", "pca"):
        raise UsageError(f"unknown map method {method!r}: use umap or pca")
    config = MapConfig(method=method, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric)
    if method == "umap" and n_neighbors < 2:
        raise UsageError(f"UMAP needs n_neighbors >= 2, got {n_neighbors}")
    x = as_matrix(features, source)
    n, d = x.shape
    need = _min_rows(config)
    if n < need:
        how = f"UMAP with n_neighbors={n_neighbors}" if method == "umap" else "a PCA map"
        raise UsageError(f"{source} has {n} row(s); {how} needs at least {need}")
    if d < 2:
        raise UsageError(f"{source} has {d}-dim features; a 2-D map needs at least 2 dims")
    digest = features_hash(x)
    key = config.cache_key()

    if cache is not None:
        store, group = cache
        hit = store.load_artifact(group, key)
        if hit is not None:
            arrays, attrs = hit
            if attrs.get("features_hash") == digest and _same_params(attrs.get("params"), config.params()):
                loaded = _reducer_from_arrays(method, arrays)
                if loaded is not None:
                    reducer_hit, points = loaded
                    return FeatureMap(method=method, config=config, points=points, reducer=reducer_hit, dim=d,
                                      features_hash=digest, cached=True, rows=x)

    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(x)
        mean = pca.mean_.astype(np.float32)
        comps = pca.components_.astype(np.float32)
        reducer: Any = (mean, comps)
        embedding = ((x - mean) @ comps.T).astype(np.float32)
        arrays_out = {"mean": mean, "components": comps, "embedding": embedding}
    else:
        reducer, embedding = _fit_umap(x, config)
        arrays_out = {"embedding": embedding}

    if cache is not None:
        store, group = cache
        store.save_artifact(
            group,
            key,
            arrays_out,
            {
                "features_hash": digest,
                "params": config.params(),
                "fit_rows": n,
                "dim": d,
            },
        )
    return FeatureMap(
        method=method, config=config, points=embedding, reducer=reducer, dim=d, features_hash=digest, rows=x
    )


def _fit_umap(x: np.ndarray, config: MapConfig) -> tuple[Any, np.ndarray]:
    """A seeded, single-threaded UMAP fit: the same rows and parameters give the same points."""
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=config.n_neighbors,
        min_dist=config.min_dist,
        metric=config.metric,
        random_state=config.seed,
        n_jobs=1,  # a seeded UMAP runs single-threaded anyway; saying so avoids its warning
    )
    embedding = np.asarray(reducer.fit_transform(x), dtype=np.float32)
    return reducer, embedding


def _same_params(stored: Any, params: dict[str, Any]) -> bool:
    """Compare cached parameters whether the store hands them back as a dict or as JSON text."""
    if isinstance(stored, (bytes, str)):
        try:
            stored = json.loads(stored)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
    return isinstance(stored, dict) and json.dumps(stored, sort_keys=True) == json.dumps(
        params, sort_keys=True
    )


def _reducer_from_arrays(method: MapMethod, arrays: dict[str, np.ndarray]) -> tuple[Any, np.ndarray] | None:
    """(reducer, points) of a cached map; the reducer is None for UMAP (refitted when needed).

    Only numeric arrays are read: an old store's ``reducer_pickle`` is ignored, never unpickled.
    None (refit) when the artifact is incomplete.
    """
    try:
        points = np.asarray(arrays["embedding"], dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 2:
            return None
        if method == "pca":
            return (np.asarray(arrays["mean"], np.float32), np.asarray(arrays["components"], np.float32)), points
        return None, points
    except (KeyError, TypeError, ValueError):
        return None
