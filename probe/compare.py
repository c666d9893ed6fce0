"""Persistence scores: which attributes does a feature encode?

The paper's question, answered as one number per attribute. Decode several samples from the same
target feature; an attribute the feature encodes stays fixed across those samples, an attribute it
does not encode varies as freely as it does across unguided samples of the same prior.

Persistence score
    For a target ``t`` and attribute ``a``::

        score(t, a) = dispersion(a over t's decoded samples) / dispersion(a over the reference set)

    ~0 = persistent (encoded by the feature), ~1 = free (varies like unguided samples), >1 = more
    varied than the reference (possible when guidance pushes samples apart). The reference is, by
    default, the decode run's unguided baseline samples (``OUT/baseline/*.png``: same prior, same
    seeds), or any image folder (``--reference DIR``, e.g. a dataset's images).

Dispersion, by the attribute's dispersion type (:attr:`probe.attributes.Attribute.dispersion_name`)
    Every dispersion below is a mean over *pairs* of distinct samples (a U-statistic), so it does not
    depend on the group size — which matters because a target has a handful of samples while the
    reference may hold hundreds of images; a plain ``1/n`` variance would shrink small groups by
    ``(n − 1)/n`` and flatter every attribute.

    * ``variance`` (continuous): the unbiased sample variance ``Σ(xᵢ − x̄)² / (n − 1)``, which equals
      the mean over pairs of ``(xᵢ − xⱼ)² / 2``.
    * ``trace`` (vector): the trace of the unbiased covariance, ``Σ‖xᵢ − x̄‖² / (n − 1)`` — the
      mean squared distance to the group mean with the same correction; equals the mean over pairs of
      ``‖xᵢ − xⱼ‖² / 2``.
    * ``correlation`` (vector; the layout thumbnail): ``1 − mean pairwise Pearson correlation``. A pair
      where both vectors are constant counts as identical (correlation 1: neither has any layout), a
      pair where exactly one is constant as uncorrelated (0).
    * ``disagreement`` (categorical): ``1 − agreement rate``, the fraction of sample pairs whose labels
      differ.

Edge cases
    * A group with one sample has no pairs: its score is NaN with reason "one sample", and it is
      excluded from the aggregate (the count of excluded targets is reported).
    * A reference dispersion of (numerically) zero — the attribute is constant in the reference — makes
      every score of that attribute NaN with reason "constant in reference", never a division error.
    * Identical samples have dispersion exactly 0 (checked before any arithmetic), so their score is 0.
    * A measurement that returns NaN/inf for some image makes the affected scores NaN ("measurement
      undefined").

Aggregate
    Per attribute: the mean score over targets with a defined score, and a percentile bootstrap
    confidence interval from resampling targets with replacement (a numpy ``Generator`` seeded from
    the run's seed and the attribute's name, so adding an attribute does not move the others' CIs).
    With a single defined target the interval is NaN (one number has no spread to resample).

Inputs
    * a decode / interpolate / perturb output directory (``manifest.jsonl`` present): groups are the
      manifest records grouped by ``target_id`` (ordered by first appearance, samples by ``sample``),
      using the best image (``image``) or the final one (``final_image``); the reference defaults to
      ``OUT/baseline/*.png``;
    * an image folder with one sub-folder per group; the reference is ``--reference DIR`` or, when that
      is not given, a sub-folder named ``baseline`` (which is then not a group).

    All images are measured at the resolution of the first sample image: others (typically dataset
    reference images) are resized to it, so resolution-dependent measurements such as edge density
    compare like with like. Groups of unequal size are refused ("mismatched groups": usually an
    interrupted decode or a stray file) unless ``allow_unequal`` is set.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.attributes import Attribute, Value, get_attributes
from probe.errors import InputError, UsageError
from probe.images import list_images
from probe.manifest import Manifest

#: Reference dispersions at or below this count as "constant in reference".
CONSTANT_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# inputs


@dataclass
class SampleGroup:
    """The decoded samples of one target (or one sub-folder of images)."""

    group_id: str
    paths: list[Path]
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleSet:
    """What ``compare`` scores: groups of samples and a reference set of images."""

    source: Path
    kind: str  # "decode" | "folders"
    groups: list[SampleGroup]
    reference: list[Path]
    reference_source: str

    @property
    def n_images(self) -> int:
        return sum(len(g.paths) for g in self.groups) + len(self.reference)


def _reference_from_dir(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: reference folder does not exist")
    images = list_images(folder, recursive=True)
    if not images:
        raise InputError(f"{folder}: reference folder has no images")
    return images


def _check_groups(groups: list[SampleGroup], where: Path, allow_unequal: bool) -> None:
    if not groups:
        raise InputError(f"{where}: no sample groups found")
    sizes = Counter(len(g.paths) for g in groups)
    if len(sizes) > 1 and not allow_unequal:
        common = sizes.most_common(1)[0][0]
        odd = next(g for g in groups if len(g.paths) != common)
        raise InputError(
            f"{where}: mismatched groups: {odd.group_id!r} has {len(odd.paths)} samples, most groups have "
            f"{common} (pass --allow-unequal to score them anyway)"
        )


def load_decode_dir(
    out_dir: Path | str, reference: Path | str | None = None, image_key: str = "image",
    allow_unequal: bool = False,
) -> SampleSet:
    """Groups from a decode/interpolate/perturb output directory's ``manifest.jsonl``."""
    out = Path(out_dir)
    if image_key not in ("image", "final_image"):
        raise UsageError(f"image key must be 'image' or 'final_image', got {image_key!r}")
    manifest = Manifest.read(out)
    by_target: dict[str, dict[int, Path]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(manifest, 1):
        rel = getattr(rec, image_key)
        if rel is None:
            raise InputError(f"{manifest.path}: record {lineno} ({rec.target_id}) lacks {image_key!r}")
        path = out / rel
        if not path.is_file():
            raise InputError(f"{manifest.path}: record {lineno}: image {rel} does not exist")
        by_target.setdefault(rec.target_id, {})[rec.sample] = path  # a resumed run may repeat: last wins
        if rec.target_id not in meta:
            walk = {"path_position": rec.path_position, "direction": rec.direction, "scale": rec.scale}
            meta[rec.target_id] = {
                "target_index": rec.target_index, "label": rec.label, "target_source": rec.target.get("source"),
                "encoder": rec.encoder, "layer": rec.layer, "prior": rec.prior,
                **{k: v for k, v in walk.items() if v is not None},
            }
    if not by_target:
        raise InputError(f"{manifest.path}: no records")
    groups = [
        SampleGroup(
            tid, [items[k] for k in sorted(items)],
            label=None if meta[tid].get("label") is None else str(meta[tid]["label"]), meta=meta[tid],
        )
        for tid, items in by_target.items()
    ]
    _check_groups(groups, manifest.path, allow_unequal)
    if reference is not None:
        ref, ref_source = _reference_from_dir(Path(reference)), str(reference)
    else:
        base = out / "baseline"
        ref = list_images(base) if base.is_dir() else []
        if not ref:
            raise InputError(f"{base}: no unguided baseline images; pass --reference DIR")
        ref_source = f"{base} (unguided samples, same prior and seeds)"
    return SampleSet(out, "decode", groups, ref, ref_source)


def load_image_folders(
    root: Path | str, reference: Path | str | None = None, allow_unequal: bool = False
) -> SampleSet:
    """Groups from an image folder with one sub-folder per group."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if reference is None:
        base = root / "baseline"
        if not base.is_dir():
            raise UsageError(f"{root}: give --reference DIR (or a 'baseline' sub-folder) to compare against")
        ref, ref_source = _reference_from_dir(base), str(base)
        subdirs = [p for p in subdirs if p != base]
    else:
        ref, ref_source = _reference_from_dir(Path(reference)), str(reference)
        ref_dir = Path(reference).resolve()
        subdirs = [p for p in subdirs if p.resolve() != ref_dir]
    if not subdirs:
        if list_images(root):
            raise InputError(
                f"{root}: images but no sub-folders; put each group's images in its own sub-folder"
            )
        raise InputError(f"{root}: empty folder (expected one sub-folder of images per group)")
    groups = []
    for sub in subdirs:
        images = list_images(sub)
        if not images:
            raise InputError(f"{sub}: group has no images")
        groups.append(SampleGroup(sub.name, images, label=sub.name))
    _check_groups(groups, root, allow_unequal)
    return SampleSet(root, "folders", groups, ref, ref_source)


def load_samples(
    path: Path | str, reference: Path | str | None = None, image_key: str = "image",
    allow_unequal: bool = False,
) -> SampleSet:
    """A decode output directory (has ``manifest.jsonl``) or an image folder of sub-folders."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder (expected a decode output directory or an image folder)")
    if (path / "manifest.jsonl").is_file():
        return load_decode_dir(path, reference, image_key, allow_unequal)
    return load_image_folders(path, reference, allow_unequal)


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as float32 ``H×W×3`` in ``[0, 1]``, resized to ``size`` = (width, height).

    Decoding is probe's one reader (``probe.images.read_image_array``: 16-bit, float, CMYK, palette
    and EXIF orientation read as a viewer shows them); only the resize is done here.
    """
    from PIL import Image

    from probe.images import read_image_array

    arr = read_image_array(path)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    hwc = arr.transpose(1, 2, 0)
    if size is not None and (hwc.shape[1], hwc.shape[0]) != tuple(size):
        im = Image.fromarray(np.round(np.clip(hwc, 0, 1) * 255).astype(np.uint8))
        return np.asarray(im.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return np.ascontiguousarray(hwc, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# dispersion and scores


def _finite(attr: Attribute, values: Sequence[Value]) -> bool:
    if attr.kind == "categorical":
        return True
    return all(np.all(np.isfinite(v)) for v in values)


def _pairwise_correlation_dispersion(x: np.ndarray) -> float:
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    flat = norms <= 1e-12 * np.maximum(np.abs(x).max(axis=1), 1.0)
    unit = np.where(flat[:, None], 0.0, centred / np.where(flat, 1.0, norms)[:, None])
    corr = unit @ unit.T
    both_flat = flat[:, None] & flat[None, :]
    corr = np.where(both_flat, 1.0, corr)
    n = len(x)
    iu = np.triu_indices(n, k=1)
    return float(1.0 - np.clip(corr[iu], -1.0, 1.0).mean())


def dispersion(attr: Attribute, values: Sequence[Value]) -> float:
    """Spread of one attribute's values (see module docstring); NaN for fewer than two values."""
    n = len(values)
    if n < 2 or not _finite(attr, values):
        return math.nan
    kind = attr.dispersion_name
    if kind == "disagreement":
        counts = np.array(list(Counter(values).values()), dtype=np.float64)
        agreement = float((counts * (counts - 1)).sum() / (n * (n - 1)))
        return 1.0 - agreement
    x = np.asarray(values, dtype=np.float64).reshape(n, -1)
    if np.all(x == x[0]):
        return 0.0  # exact: identical samples must score 0, not a rounding residue
    if kind == "correlation":
        return _pairwise_correlation_dispersion(x)
    centred = x - x.mean(axis=0)
    return float((centred**2).sum() / (n - 1))  # variance (D = 1) or trace of the covariance


@dataclass
class Score:
    """One target's persistence for one attribute."""

    attribute: str
    n_samples: int
    within: float
    reference: float
    score: float
    reason: str | None = None


def persistence(attr: Attribute, samples: Sequence[Value], reference_dispersion: float) -> Score:
    """Score one group's values against the reference dispersion, with a reason when undefined."""
    n = len(samples)
    within = dispersion(attr, samples)
    if n < 2:
        return Score(attr.name, n, math.nan, reference_dispersion, math.nan, "one sample")
    if math.isnan(within):
        return Score(attr.name, n, within, reference_dispersion, math.nan, "measurement undefined")
    if math.isnan(reference_dispersion):
        return Score(attr.name, n, within, reference_dispersion, math.nan, "reference undefined")
    if reference_dispersion <= CONSTANT_EPS:
        return Score(attr.name, n, within, reference_dispersion, math.nan, "constant in reference")
    return Score(attr.name, n, within, reference_dispersion, within / reference_dispersion)


def bootstrap_ci(
    scores: np.ndarray, n_boot: int, level: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``scores`` (targets resampled with replacement), by
    ``scipy.stats.bootstrap``; NaN for fewer than two scores (one number has no spread to resample)."""
    from scipy.stats import bootstrap

    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2 or n_boot < 1:
        return math.nan, math.nan
    ci = bootstrap((scores,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                   random_state=rng, vectorized=True).confidence_interval
    return float(ci.low), float(ci.high)


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class CompareConfig:
    """How to score: bootstrap size, CI level, seed, reading thresholds, batch size."""

    n_boot: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    #: mean score below which an attribute reads "encoded", and below which "partly" (else "free");
    #: a reading aid only — the numbers and CIs are the result.
    encoded_below: float = 0.3
    partly_below: float = 0.7
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.ci_level < 1.0:
            raise UsageError(f"CI level must be between 0 and 1, got {self.ci_level}")
        if self.n_boot < 0:
            raise UsageError(f"bootstrap resamples must be ≥ 0, got {self.n_boot}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be ≥ 1, got {self.batch_size}")


@dataclass
class AttributeSummary:
    """One attribute's persistence aggregated over targets."""

    name: str
    kind: str
    group: str
    dispersion: str
    description: str
    mean: float
    ci_low: float
    ci_high: float
    median: float
    n_targets: int
    n_excluded: int
    reference_dispersion: float
    excluded_reasons: dict[str, int] = field(default_factory=dict)
    verdict: str = "undefined"


@dataclass
class TargetResult:
    """All attribute scores of one target, plus the raw values for the per-target tables."""

    target_id: str
    label: str | None
    n_samples: int
    paths: list[str]
    scores: dict[str, Score]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareResult:
    """Everything ``probe compare`` reports: summaries ranked most → least persistent, per target."""

    source: str
    kind: str
    reference_source: str
    n_reference: int
    summaries: list[AttributeSummary]
    targets: list[TargetResult]
    config: CompareConfig
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; NaN becomes ``null`` (strict JSON has no NaN)."""
        return _nan_to_none({
            "source": self.source,
            "kind": self.kind,
            "reference": {"source": self.reference_source, "n_images": self.n_reference},
            "config": asdict(self.config),
            "attributes": [asdict(s) for s in self.summaries],
            "targets": [
                {
                    "target_id": t.target_id, "label": t.label, "n_samples": t.n_samples, "paths": t.paths,
                    "meta": t.meta, "scores": {k: asdict(v) for k, v in t.scores.items()},
                }
                for t in self.targets
            ],
            "warnings": self.warnings,
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=str)

    def to_csv(self, per_target: bool = False) -> str:
        """Summary CSV (one row per attribute, ranked) or, with ``per_target``, one row per score."""
        buf = io.StringIO()
        w = csv.writer(buf)
        if not per_target:
            w.writerow(["rank", "attribute", "kind", "group", "dispersion", "mean", "ci_low", "ci_high",
                        "median", "n_targets", "n_excluded", "reference_dispersion", "verdict"])
            for i, s in enumerate(self.summaries, 1):
                w.writerow([i, s.name, s.kind, s.group, s.dispersion, _num(s.mean), _num(s.ci_low),
                            _num(s.ci_high), _num(s.median), s.n_targets, s.n_excluded,
                            _num(s.reference_dispersion), s.verdict])
        else:
            w.writerow(["target_id", "label", "attribute", "n_samples", "within", "reference", "score",
                        "reason"])
            for t in self.targets:
                for sc in t.scores.values():
                    w.writerow([t.target_id, t.label or "", sc.attribute, sc.n_samples, _num(sc.within),
                                _num(sc.reference), _num(sc.score), sc.reason or ""])
        return buf.getvalue()


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    return obj


def measure_paths(
    attributes: Sequence[Attribute], paths: Sequence[Path], size: tuple[int, int] | None, batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[Value]]:
    """Measure every attribute on every image, loading images in chunks to bound memory."""
    values: dict[str, list[Value]] = {a.name: [] for a in attributes}
    for start in range(0, len(paths), batch_size):
        chunk = [load_image(p, size) for p in paths[start:start + batch_size]]
        for a in attributes:
            values[a.name].extend(a.measure(chunk))
        if progress is not None:
            progress(len(chunk))
    return values


def _verdict(mean: float, cfg: CompareConfig) -> str:
    if math.isnan(mean):
        return "undefined"
    if mean < cfg.encoded_below:
        return "encoded"
    return "partly" if mean < cfg.partly_below else "free"


def score_values(
    attributes: Sequence[Attribute],
    group_values: Sequence[dict[str, list[Value]]],
    reference_values: dict[str, list[Value]],
    config: CompareConfig | None = None,
) -> tuple[list[AttributeSummary], list[list[Score]]]:
    """Scores and summaries from measured values (the part of :func:`compare` without image files).

    Returns the summaries ranked from most to least persistent (undefined last) and, per group, its
    list of scores in attribute order.
    """
    cfg = config or CompareConfig()
    per_group: list[list[Score]] = [[] for _ in group_values]
    summaries = []
    for attr in attributes:
        ref_disp = dispersion(attr, reference_values[attr.name])
        scores = []
        for gi, gv in enumerate(group_values):
            sc = persistence(attr, gv[attr.name], ref_disp)
            per_group[gi].append(sc)
            scores.append(sc)
        valid = np.array([s.score for s in scores if not math.isnan(s.score)], dtype=np.float64)
        reasons = Counter(s.reason or "undefined" for s in scores if math.isnan(s.score))
        rng = np.random.default_rng([cfg.seed, zlib.crc32(attr.name.encode("utf-8"))])
        lo, hi = bootstrap_ci(valid, cfg.n_boot, cfg.ci_level, rng)
        mean = float(valid.mean()) if len(valid) else math.nan
        summaries.append(AttributeSummary(
            name=attr.name, kind=attr.kind, group=attr.group, dispersion=attr.dispersion_name,
            description=attr.description, mean=mean, ci_low=lo, ci_high=hi,
            median=float(np.median(valid)) if len(valid) else math.nan,
            n_targets=len(valid), n_excluded=len(scores) - len(valid), reference_dispersion=ref_disp,
            excluded_reasons=dict(reasons), verdict=_verdict(mean, cfg),
        ))
    summaries.sort(key=lambda s: (math.isnan(s.mean), 0.0 if math.isnan(s.mean) else s.mean))
    return summaries, per_group


def compare(
    samples: SampleSet,
    attributes: Sequence[Attribute] | None = None,
    config: CompareConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> CompareResult:
    """Measure every group and the reference, score persistence, aggregate with bootstrap CIs."""
    cfg = config or CompareConfig()
    attrs = list(attributes) if attributes is not None else get_attributes()
    if not attrs:
        raise UsageError("no attributes to compare")
    names = [a.name for a in attrs]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise UsageError(f"attribute {dup[0]!r} given twice")
    first = load_image(samples.groups[0].paths[0])
    size = (first.shape[1], first.shape[0])
    group_values = [measure_paths(attrs, g.paths, size, cfg.batch_size, progress) for g in samples.groups]
    reference_values = measure_paths(attrs, samples.reference, size, cfg.batch_size, progress)
    summaries, per_group = score_values(attrs, group_values, reference_values, cfg)

    warnings = []
    if len(samples.reference) < 2:
        warnings.append(f"reference {samples.reference_source} has {len(samples.reference)} image; "
                        "every score is undefined")
    singles = [g.group_id for g in samples.groups if len(g.paths) < 2]
    if singles:
        warnings.append(f"{len(singles)} target(s) with one sample have no score (excluded): "
                        + ", ".join(singles[:5]) + (" …" if len(singles) > 5 else ""))
    constant = [s.name for s in summaries if s.excluded_reasons.get("constant in reference")]
    if constant:
        warnings.append("constant in the reference (no score): " + ", ".join(constant))

    targets = [
        TargetResult(g.group_id, g.label, len(g.paths), [str(p) for p in g.paths],
                     {sc.attribute: sc for sc in scores}, g.meta)
        for g, scores in zip(samples.groups, per_group, strict=True)
    ]
    return CompareResult(str(samples.source), samples.kind, samples.reference_source, len(samples.reference),
                         summaries, targets, cfg, warnings)


class _CallableModule(type(sys.modules[__name__])):
    """``probe.compare`` is both this module and the API function: importing a submodule sets the package
    attribute to the module, so the module itself forwards calls to :func:`probe.workflows.compare.run`."""

    def __call__(self, *args: Any, **kwargs: Any) -> CompareResult:
        from probe.workflows.compare import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
