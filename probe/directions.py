"""Feature-space geometry for `probe interpolate`, `probe perturb` and `probe map`.

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
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from probe.errors import InputError, UsageError

PathKind = Literal["linear", "slerp"]
MapMethod = Literal["umap", "pca"]

# Parallel / antiparallel tolerance on the angle between the two directions (radians).
_ANGLE_EPS = 1e-6
# Below this norm a feature vector is treated as the origin (it has no direction).
_ZERO_NORM = 1e-12
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


def _as_matrix(features: Any, source: str) -> np.ndarray:
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


def _as_vector(v: Any, name: str) -> np.ndarray:
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


def _projection_std(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Sample std (ddof=1) of the set along each unit vector; ddof=1 matches sklearn's PCA."""
    if features.shape[0] < 2:
        return np.zeros(vectors.shape[0], dtype=np.float32)
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    proj = centred @ vectors.astype(np.float64).T
    return proj.std(axis=0, ddof=1).astype(np.float32)


def _unit_rows(vectors: np.ndarray, source: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms <= _ZERO_NORM)
    if zero.size:
        raise InputError(f"{source}: direction(s) {zero.tolist()} have zero length")
    return (vectors / norms[:, None]).astype(np.float32)


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
    va = _as_vector(a, "A")
    vb = _as_vector(b, "B")
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
    if na <= _ZERO_NORM or nb <= _ZERO_NORM:
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
# directions


@dataclass
class Directions:
    """Unit directions in feature space and the spread of a feature set along each.

    ``std`` is None when no feature set was given (random or user directions without features);
    perturbation in std units then needs :meth:`with_std`.  ``center`` is the set's mean, the
    natural base point when the user gives none.
    """

    vectors: np.ndarray  # [K, D] float32, unit norm
    names: list[str]
    std: np.ndarray | None = None  # [K] float32
    center: np.ndarray | None = None  # [D] float32
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be [K, D], got {self.vectors.shape}")
        if len(self.names) != self.vectors.shape[0]:
            raise ValueError("one name per direction is required")
        if self.std is not None and self.std.shape != (self.vectors.shape[0],):
            raise ValueError("one std per direction is required")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def with_std(self, features: Any, source: str = "feature set") -> Directions:
        """Copy with ``std``/``center`` measured on ``features`` (e.g. the store the base came from)."""
        x = _as_matrix(features, source)
        if x.shape[1] != self.dim:
            raise UsageError(
                f"{source} has {x.shape[1]}-dim features but the directions have {self.dim} dims"
            )
        if x.shape[0] < 2:
            raise UsageError(f"{source} has {x.shape[0]} row(s); measuring a std needs at least 2")
        return replace(self, std=_projection_std(x, self.vectors), center=x.mean(axis=0).astype(np.float32))

    def to_record(self, k: int) -> dict[str, Any]:
        """JSON-able description of direction ``k`` for a manifest line."""
        rec: dict[str, Any] = {"name": self.names[k], "source": self.metadata.get("source")}
        if self.std is not None:
            rec["std"] = float(self.std[k])
        for key in ("explained_variance_ratio", "class_pair", "mean_distance"):
            vals = self.metadata.get(key)
            if vals is not None:
                v = vals[k]
                rec[key] = v.tolist() if isinstance(v, np.ndarray) else v
        return rec


def _pca_fit_size(n: int, d: int, needed: int) -> int:
    """How many components to fit: at least 32 so later requests for more rarely refit."""
    return min(n, d, max(needed, 32))


def pca_directions(
    features: Any,
    components: Sequence[int],
    cache: Cache | None = None,
    source: str = "feature set",
    seed: int = 0,
) -> Directions:
    """Principal components (1-based indices) of ``features``, fitted once per feature set.

    The fit (mean, components, explained variance and its ratio) is stored as the ``pca``
    artifact of the cache group together with a hash of the rows; a later call on the same rows
    reuses it (``metadata["cached"]`` tells which happened), and a call that needs more
    components than were fitted, or on changed rows, refits and overwrites it.
    """
    from sklearn.decomposition import PCA

    comps = [int(c) for c in components]
    if not comps:
        raise UsageError("no principal components requested")
    if min(comps) < 1:
        raise UsageError(f"components are numbered from 1, got {min(comps)}")
    x = _as_matrix(features, source)
    n, d = x.shape
    needed = max(comps)
    available = min(n - 1, d)  # n rows span at most n-1 dimensions around their mean
    if n < 2 or needed > available:
        rows_needed = max(needed + 1, 2)
        raise UsageError(
            f"{source} has {n} row(s) of {d} dims: PCA component {needed} needs at least "
            f"{rows_needed} rows" + (f" and {needed} dims" if needed > d else "")
        )

    digest = features_hash(x)
    fitted: dict[str, np.ndarray] | None = None
    cached = False
    if cache is not None:
        store, group = cache
        hit = store.load_artifact(group, PCA_ARTIFACT_KEY)
        if hit is not None:
            arrays, attrs = hit
            if attrs.get("features_hash") == digest and arrays["components"].shape[0] >= needed:
                fitted, cached = arrays, True
    if fitted is None:
        pca = PCA(n_components=_pca_fit_size(n, d, needed), random_state=seed)
        pca.fit(x)
        fitted = {
            "mean": pca.mean_.astype(np.float32),
            "components": pca.components_.astype(np.float32),
            "explained_variance": pca.explained_variance_.astype(np.float32),
            "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float32),
        }
        if cache is not None:
            store, group = cache
            store.save_artifact(
                group,
                PCA_ARTIFACT_KEY,
                fitted,
                {"features_hash": digest, "fit_rows": n, "dim": d, "seed": seed},
            )

    idx = np.asarray(comps) - 1
    vectors = _unit_rows(np.asarray(fitted["components"])[idx], source)
    ev = np.asarray(fitted["explained_variance"])[idx]
    return Directions(
        vectors=vectors,
        names=[f"PC{c}" for c in comps],
        std=np.sqrt(np.maximum(ev, 0.0)).astype(np.float32),
        center=np.asarray(fitted["mean"], dtype=np.float32),
        metadata={
            "source": "pca",
            "components": comps,
            "explained_variance": ev.astype(np.float32),
            "explained_variance_ratio": np.asarray(fitted["explained_variance_ratio"])[idx],
            "n_rows": n,
            "cached": cached,
        },
    )


def class_mean_directions(
    features: Any,
    labels: Any,
    pairs: Sequence[tuple[int, int]] | None = None,
    class_names: Sequence[str] | None = None,
    source: str = "feature set",
) -> Directions:
    """Directions between class means: ``(i, j)`` points from class i's mean to class j's.

    Without ``pairs`` each present class c gets the direction from the mean of all labelled rows
    to class c's mean ("all-vs-mean").  Rows labelled -1 (unknown) are ignored.  The distance
    between the two means is kept in ``metadata["mean_distance"]`` (and in std units), since it
    says which scale carries one class's mean onto the other's.
    """
    x = _as_matrix(features, source)
    if labels is None:
        raise UsageError(
            f"{source} has no labels: class-mean directions need a feature set extracted with labels"
        )
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise InputError(f"{source}: {y.shape[0]} labels for {x.shape[0]} feature rows")
    known = y >= 0
    if not np.any(known):
        raise UsageError(f"{source}: every row's label is unknown (-1); class directions need labels")
    present = sorted(int(c) for c in np.unique(y[known]))

    def cname(c: int) -> str:
        if class_names is not None and 0 <= c < len(class_names):
            return str(class_names[c])
        return str(c)

    means = {c: x[y == c].mean(axis=0, dtype=np.float64) for c in present}
    raw: list[np.ndarray] = []
    names: list[str] = []
    pair_meta: list[tuple[int | None, int]] = []
    if pairs is None:
        if len(present) < 2:
            raise UsageError(f"{source}: only class {cname(present[0])} is present; need at least 2")
        overall = x[known].mean(axis=0, dtype=np.float64)
        for c in present:
            raw.append(means[c] - overall)
            names.append(f"mean→{cname(c)}")
            pair_meta.append((None, c))
    else:
        if not pairs:
            raise UsageError("no class pairs given")
        for i, j in pairs:
            for c in (i, j):
                if c not in means:
                    raise UsageError(
                        f"{source}: class {cname(int(c))} has no labelled rows "
                        f"(present: {', '.join(cname(p) for p in present)})"
                    )
            if i == j:
                raise UsageError(f"class pair ({i}, {j}) has the same class twice")
            raw.append(means[j] - means[i])
            names.append(f"{cname(i)}→{cname(j)}")
            pair_meta.append((int(i), int(j)))
    diffs = np.stack(raw)
    dist = np.linalg.norm(diffs, axis=1)
    vectors = _unit_rows(diffs, source)
    std = _projection_std(x, vectors)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist_std = np.where(std > 0, dist / np.maximum(std, 1e-30), np.nan)
    return Directions(
        vectors=vectors,
        names=names,
        std=std,
        center=x.mean(axis=0).astype(np.float32),
        metadata={
            "source": "class-mean",
            "class_pair": pair_meta,
            "mean_distance": dist.astype(np.float32),
            "mean_distance_std": dist_std.astype(np.float32),
        },
    )


def random_directions(
    dim: int, k: int, seed: int = 0, features: Any = None, source: str = "feature set"
) -> Directions:
    """``k`` random unit directions (isotropic Gaussian, normalised) drawn from ``seed``.

    A baseline for PCA/class directions: what does moving along an arbitrary direction do?
    With ``features`` the set's std along each direction is measured too.
    """
    if dim < 1:
        raise UsageError(f"feature dimension must be positive, got {dim}")
    if k < 1:
        raise UsageError(f"number of random directions must be positive, got {k}")
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((k, dim))
    dirs = Directions(
        vectors=_unit_rows(v, "random directions"),
        names=[f"rand{i + 1}" for i in range(k)],
        metadata={"source": "random", "seed": seed},
    )
    return dirs.with_std(features, source) if features is not None else dirs


def load_directions(
    npy_path: str | Path, dim: int, features: Any = None, source: str = "feature set"
) -> Directions:
    """User directions from a ``.npy`` file holding [D] or [K, D]; rows are normalised to unit length."""
    path = Path(npy_path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"directions file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read directions from {path}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"{path}: expected directions of shape [D] or [K, D], got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: directions must be numeric, got dtype {arr.dtype}")
    if arr.shape[1] != dim:
        raise UsageError(f"{path} holds {arr.shape[1]}-dim directions but the features have {dim} dims")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: directions contain NaN or infinite values")
    dirs = Directions(
        vectors=_unit_rows(arr, str(path)),
        names=[f"{path.stem}[{i}]" for i in range(arr.shape[0])],
        metadata={"source": "npy", "path": str(path)},
    )
    return dirs.with_std(features, source) if features is not None else dirs


def perturbation_targets(base: Any, directions: Directions, scales: Sequence[float]) -> np.ndarray:
    """Targets [K, S, D]: ``base + scale * std_k * v_k`` -- scales are in units of the set's std."""
    if directions.std is None:
        raise UsageError("the directions have no std: measure it on a feature set first (with_std)")
    v = _as_vector(base, "perturbation base")
    if v.shape[0] != directions.dim:
        raise UsageError(
            f"the base has {v.shape[0]} dims but the directions have {directions.dim}: "
            "they must come from the same encoder and layer"
        )
    s = np.asarray(scales, dtype=np.float64)  # [S] shared, or [K, S] per direction (probe.walk_range)
    if s.ndim not in (1, 2) or s.size == 0 or (s.ndim == 2 and s.shape[0] != len(directions.vectors)):
        raise UsageError("no perturbation scales given")
    step = directions.std.astype(np.float64)[:, None, None] * (s[:, :, None] if s.ndim == 2 else s[None, :, None])
    out = v[None, None, :] + step * directions.vectors.astype(np.float64)[:, None, :]
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# option parsing


def parse_components(text: str) -> list[int]:
    """'1-5' -> [1..5]; '1,3,4' -> [1, 3, 4]; mixes such as '1-3,7' work; duplicates dropped."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if hi < lo:
                    raise UsageError(f"--components: range {part!r} runs backwards")
                values = list(range(lo, hi + 1))
            else:
                values = [int(part)]
        except ValueError:
            raise UsageError(
                f"--components: cannot read {part!r}; use a range like 1-5 or a list like 1,3,4"
            ) from None
        for c in values:
            if c < 1:
                raise UsageError(f"--components: components are numbered from 1, got {c}")
            if c not in out:
                out.append(c)
    if not out:
        raise UsageError("--components: no components given")
    return out


def parse_scales(text: str) -> list[float]:
    """'-3,-1.5,0,1.5,3' -> [-3.0, -1.5, 0.0, 1.5, 3.0] (order kept: it is the column order)."""
    out: list[float] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--scales: {part!r} is not a number; use e.g. -3,-1.5,0,1.5,3") from None
        if not np.isfinite(value):
            raise UsageError(f"--scales: {part!r} is not a finite number")
        out.append(value)
    if not out:
        raise UsageError("--scales: no scales given")
    return out


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
        x = _as_matrix(features, source)
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
    x = _as_matrix(features, source)
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
