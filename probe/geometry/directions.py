"""Directions in feature space for `probe perturb`: PCA, class-mean and random unit directions, each with the
set's standard deviation along it (ddof=1, as sklearn's PCA, so perturbation scales read as "n standard
deviations"), and the parsing of ``--components`` (1-based: "PC1" is the first principal component) and
``--scales``. Conventions shared by the geometry modules (arrays only, the store as an artifact cache, the
error kinds): :mod:`probe.geometry.features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from probe.errors import InputError, UsageError
from probe.geometry.features import (
    PCA_ARTIFACT_KEY,
    Cache,
    as_matrix,
    as_vector,
    features_hash,
    projection_std,
    unit_rows,
)

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
        x = as_matrix(features, source)
        if x.shape[1] != self.dim:
            raise UsageError(
                f"{source} has {x.shape[1]}-dim features but the directions have {self.dim} dims"
            )
        if x.shape[0] < 2:
            raise UsageError(f"{source} has {x.shape[0]} row(s); measuring a std needs at least 2")
        return replace(self, std=projection_std(x, self.vectors), center=x.mean(axis=0).astype(np.float32))

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
    x = as_matrix(features, source)
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
    vectors = unit_rows(np.asarray(fitted["components"])[idx], source)
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
    x = as_matrix(features, source)
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
    vectors = unit_rows(diffs, source)
    std = projection_std(x, vectors)
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
        vectors=unit_rows(v, "random directions"),
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
        vectors=unit_rows(arr, str(path)),
        names=[f"{path.stem}[{i}]" for i in range(arr.shape[0])],
        metadata={"source": "npy", "path": str(path)},
    )
    return dirs.with_std(features, source) if features is not None else dirs


def perturbation_targets(base: Any, directions: Directions, scales: Sequence[float]) -> np.ndarray:
    """Targets [K, S, D]: ``base + scale * std_k * v_k`` -- scales are in units of the set's std."""
    if directions.std is None:
        raise UsageError("the directions have no std: measure it on a feature set first (with_std)")
    v = as_vector(base, "perturbation base")
    if v.shape[0] != directions.dim:
        raise UsageError(
            f"the base has {v.shape[0]} dims but the directions have {directions.dim}: "
            "they must come from the same encoder and layer"
        )
    s = np.asarray(scales, dtype=np.float64)  # [S] shared, or [K, S] per direction (probe.geometry.walk_range)
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


