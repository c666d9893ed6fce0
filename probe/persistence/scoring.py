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

Dispersion, by the attribute's dispersion type (:attr:`probe.persistence.attributes.Attribute.dispersion_name`)
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
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.errors import InputError, UsageError
from probe.persistence.attributes import ATTRIBUTES, GREY_EQUIVALENT, Attribute, Value, get_attributes, is_grey
from probe.persistence.samples import SampleSet, load_image

#: Reference dispersions at or below this count as "constant in reference".
CONSTANT_EPS = 1e-12
#: Below this many scored targets a bootstrap CI is too rough to lean on: compare warns.
MIN_CI_TARGETS = 10
TOO_FEW_NATURAL = "too few natural samples"
CIRCULAR = "circular: the decoded network"


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


def persistence(
    attr: Attribute, samples: Sequence[Value], reference_dispersion: float, few_reason: str | None = None
) -> Score:
    """Score one group's values against the reference dispersion, with a reason when undefined.

    ``few_reason`` names why a group has fewer than two samples when that is not simply how it was decoded
    (e.g. "too few natural samples" after off-manifold samples were excluded).
    """
    n = len(samples)
    within = dispersion(attr, samples)
    if n < 2:
        reason = few_reason or ("one sample" if n == 1 else "no sample")
        return Score(attr.name, n, math.nan, reference_dispersion, math.nan, reason)
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
    #: measured by the network the samples were decoded with: its agreement is no evidence (the decode
    #: optimised exactly that network), so it is ranked apart and its verdict reads "circular"
    circular: bool = False
    circular_reason: str | None = None
    #: the measuring network of a model-based attribute (spec, weights, role)
    model: dict[str, str] | None = None


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
    #: attributes reported once instead of scored (e.g. colour on grey images): [{label, attributes, note}]
    collapsed: list[dict[str, Any]] = field(default_factory=list)
    #: the off-manifold flags of the decode and what was done with them (None for image folders)
    off_manifold: dict[str, Any] | None = None

    @property
    def ranked(self) -> list[AttributeSummary]:
        """The summaries that make the verdict ranking: every attribute not measured by the decoded network."""
        return [s for s in self.summaries if not s.circular]

    @property
    def circular(self) -> list[AttributeSummary]:
        return [s for s in self.summaries if s.circular]

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
            "collapsed": self.collapsed,
            "off_manifold": self.off_manifold,
            "warnings": self.warnings,
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=str)

    def to_csv(self, per_target: bool = False) -> str:
        """Summary CSV (one row per attribute, ranked) or, with ``per_target``, one row per score."""
        buf = io.StringIO()
        w = _SafeCsv(csv.writer(buf))
        if not per_target:
            w.writerow(["rank", "attribute", "kind", "group", "dispersion", "mean", "ci_low", "ci_high",
                        "median", "n_targets", "n_excluded", "reference_dispersion", "verdict", "circular"])
            # circular attributes have no rank: they are listed after the ranking
            for i, s in enumerate(self.ranked + self.circular, 1):
                w.writerow(["" if s.circular else i, s.name, s.kind, s.group, s.dispersion, _num(s.mean),
                            _num(s.ci_low), _num(s.ci_high), _num(s.median), s.n_targets, s.n_excluded,
                            _num(s.reference_dispersion), s.verdict, "true" if s.circular else "false"])
        else:
            w.writerow(["target_id", "label", "attribute", "n_samples", "within", "reference", "score",
                        "reason", "circular"])
            circ = {s.name for s in self.circular}
            for t in self.targets:
                for sc in t.scores.values():
                    w.writerow([t.target_id, t.label or "", sc.attribute, sc.n_samples, _num(sc.within),
                                _num(sc.reference), _num(sc.score), sc.reason or "",
                                "true" if sc.attribute in circ else "false"])
        return buf.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(cell: object) -> object:
    """A cell a spreadsheet will not run: text starting with = + - @ (or tab/CR) gets a leading quote.

    Names come from manifests and folder names, i.e. from whoever made the run; numbers pass unchanged.
    """
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        try:
            float(cell)
            return cell  # "-0.25" is a number, not a formula
        except ValueError:
            return "'" + cell
    return cell


class _SafeCsv:
    """csv.writer whose rows go through ``csv_safe``."""

    def __init__(self, writer):
        self._w = writer

    def writerow(self, row) -> None:
        self._w.writerow([csv_safe(c) for c in row])


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
    progress: Callable[[int], None] | None = None, stats: dict[str, Any] | None = None,
) -> dict[str, list[Value]]:
    """Measure every attribute on every image, loading images in chunks to bound memory.

    ``stats``, when given, gets ``grey`` = whether every image measured so far has no colour.
    """
    values: dict[str, list[Value]] = {a.name: [] for a in attributes}
    for start in range(0, len(paths), batch_size):
        chunk = [load_image(p, size) for p in paths[start:start + batch_size]]
        if stats is not None:
            stats["grey"] = stats.get("grey", True) and all(is_grey(im) for im in chunk)
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
    few_reasons: Sequence[str | None] | None = None,
    circular: dict[str, str] | None = None,
) -> tuple[list[AttributeSummary], list[list[Score]]]:
    """Scores and summaries from measured values (the part of :func:`compare` without image files).

    Returns the summaries ranked from most to least persistent (undefined last, circular ones — names in
    ``circular``, mapped to the reason — after all others) and, per group, its list of scores in attribute
    order. ``few_reasons[g]`` names why group ``g`` may hold fewer than two samples (see
    :func:`persistence`).
    """
    cfg = config or CompareConfig()
    circular = circular or {}
    few = list(few_reasons) if few_reasons is not None else [None] * len(group_values)
    per_group: list[list[Score]] = [[] for _ in group_values]
    summaries = []
    for attr in attributes:
        ref_disp = dispersion(attr, reference_values[attr.name])
        scores = []
        for gi, gv in enumerate(group_values):
            sc = persistence(attr, gv[attr.name], ref_disp, few[gi])
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
            excluded_reasons=dict(reasons),
            verdict="circular" if attr.name in circular else _verdict(mean, cfg),
            circular=attr.name in circular, circular_reason=circular.get(attr.name), model=attr.model,
        ))
    summaries.sort(key=lambda s: (s.circular, math.isnan(s.mean), 0.0 if math.isnan(s.mean) else s.mean))
    return summaries, per_group


def circular_attributes(
    attributes: Sequence[Attribute], decoded_encoders: Sequence[dict[str, str | None]]
) -> dict[str, str]:
    """Attributes measured by a network the samples were decoded with, mapped to the reason.

    Same spec and same weights is the same network: the weights file's sha256 when both sides know it
    (a local checkpoint), else the weights as given (``""`` = the spec's default weights). When the decode
    did not record its weights (manifests before ``encoder_weights``), the same spec counts as circular:
    the cautious reading, since the default weights are by far the common case.
    """
    out: dict[str, str] = {}
    for a in attributes:
        m = a.model or {}
        for d in decoded_encoders:
            if not m.get("spec") or m.get("spec") != d.get("spec"):
                continue
            sha_a, sha_d = m.get("weights_sha256") or "", d.get("weights_sha256") or ""
            if d.get("weights") is None:
                out[a.name] = f"{CIRCULAR} ({d['spec']}; the decode did not record its weights)"
            elif (sha_a == sha_d) if sha_a and sha_d else ((m.get("weights") or "") == (d.get("weights") or "")):
                out[a.name] = f"{CIRCULAR} ({d['spec']})"
    return out


GREY_LABEL = "colour (grey images: same as luminance)"


def grey_collapse(attrs: Sequence[Attribute]) -> tuple[list[Attribute], dict[str, Any] | None]:
    """Drop the built-in colour measurements that say nothing on grey images (see GREY_EQUIVALENT)."""
    dup = [a.name for a in attrs if a.name in GREY_EQUIVALENT and ATTRIBUTES.get(a.name) is a]
    if not dup or len(dup) == len(attrs):  # nothing to collapse, or nothing would be left to score
        return list(attrs), None
    same = {n: GREY_EQUIVALENT[n] for n in dup}
    parts = [f"{', '.join(n for n in dup if same[n] == t)} = {t}" for t in ("brightness", "contrast")
             if any(same[n] == t for n in dup)]
    undefined = [n for n in dup if same[n] is None]
    if undefined:
        parts.append(f"{', '.join(undefined)}: undefined (no chroma)")
    note = ("every image is grey (R = G = B), so " + "; ".join(parts)
            + " — not scored; read brightness and contrast instead")
    return [a for a in attrs if a.name not in same], {"label": GREY_LABEL, "attributes": dup, "same_as": same,
                                                      "note": note}


def _off_manifold_warnings(summary: dict[str, Any] | None) -> list[str]:
    if not summary or not summary["n_recorded"]:
        return []
    n, n_flag, share = summary["n_recorded"], summary["n_flagged"], summary["share"]
    head = (f"off-manifold: {n_flag} of {n} samples ({share:.0%}) flagged by the decode's checks (realism, "
            "reach, domain)")
    if not n_flag:
        return []
    if summary["policy"] == "exclude":
        per = ", ".join(f"{tid} {k}" for tid, k in list(summary["excluded"].items())[:10])
        more = " …" if len(summary["excluded"]) > 10 else ""
        out = [f"{head}; excluded from the scores (per target: {per}{more}); --off-manifold mark keeps them"]
        if summary["too_few"]:
            few = summary["too_few"]
            out.append(f"{len(few)} target(s) left with fewer than 2 natural samples have no score "
                       f"({TOO_FEW_NATURAL}): " + ", ".join(few[:5]) + (" …" if len(few) > 5 else ""))
        return out
    verb = "scored and marked" if summary["policy"] == "mark" else "scored (--off-manifold keep)"
    return [f"{head}; {verb}: their texture can read as 'encoded'"]


def compare(
    samples: SampleSet,
    attributes: Sequence[Attribute] | None = None,
    config: CompareConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> CompareResult:
    """Measure every group and the reference, score persistence, aggregate with bootstrap CIs.

    Honesty checks on top of the scores (issue 10): attributes measured by the decoded network are marked
    circular and ranked apart; the built-in colour measurements are collapsed into one note when every
    image is grey; off-manifold samples were handled when the samples were loaded (their counts are
    reported); a warning says when the CIs rest on fewer than :data:`MIN_CI_TARGETS` targets.
    """
    cfg = config or CompareConfig()
    attrs = list(attributes) if attributes is not None else get_attributes()
    if not attrs:
        raise UsageError("no attributes to compare")
    names = [a.name for a in attrs]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise UsageError(f"attribute {dup[0]!r} given twice")
    first_path = next((p for g in samples.groups for p in g.paths), None)
    if first_path is None:
        if not samples.reference:
            raise InputError(f"{samples.source}: no images to score")
        first_path = samples.reference[0]
    first = load_image(first_path)
    size = (first.shape[1], first.shape[0])
    stats: dict[str, Any] = {}
    group_values = [measure_paths(attrs, g.paths, size, cfg.batch_size, progress, stats) for g in samples.groups]
    reference_values = measure_paths(attrs, samples.reference, size, cfg.batch_size, progress, stats)
    collapsed: list[dict[str, Any]] = []
    if stats.get("grey"):
        attrs, grey = grey_collapse(attrs)
        if grey:
            collapsed.append(grey)
    circular = circular_attributes(attrs, samples.decoded_encoders)
    few = [TOO_FEW_NATURAL if g.excluded else None for g in samples.groups]
    summaries, per_group = score_values(attrs, group_values, reference_values, cfg, few, circular)

    warnings = []
    if len(samples.reference) < 2:
        warnings.append(f"reference {samples.reference_source} has {len(samples.reference)} image; "
                        "every score is undefined")
    singles = [g.group_id for g in samples.groups if len(g.paths) < 2 and not g.excluded]
    if singles:
        warnings.append(f"{len(singles)} target(s) with one sample have no score (excluded): "
                        + ", ".join(singles[:5]) + (" …" if len(singles) > 5 else ""))
    warnings += _off_manifold_warnings(samples.off_manifold)
    constant = [s.name for s in summaries if s.excluded_reasons.get("constant in reference")]
    if constant:
        warnings.append("constant in the reference (no score): " + ", ".join(constant))
    if circular:
        warnings.append("circular (measured by the network that was decoded, so its agreement is no evidence; "
                        "ranked apart): " + ", ".join(circular))
    scored = max((s.n_targets for s in summaries if not s.circular), default=0)
    if 0 < scored < MIN_CI_TARGETS:
        warnings.append(f"the confidence intervals rest on {scored} target(s), fewer than {MIN_CI_TARGETS}: "
                        "read them as rough (decode more targets for firm ones)")

    targets = []
    for g, scores in zip(samples.groups, per_group, strict=True):
        meta = dict(g.meta)
        if samples.off_manifold is not None and samples.off_manifold["n_recorded"]:
            meta["off_manifold"] = {"excluded": len(g.excluded),
                                    "flagged_scored": sum(f is True for f in g.off_manifold)}
        targets.append(TargetResult(g.group_id, g.label, len(g.paths), [str(p) for p in g.paths],
                                    {sc.attribute: sc for sc in scores}, meta))
    return CompareResult(str(samples.source), samples.kind, samples.reference_source, len(samples.reference),
                         summaries, targets, cfg, warnings, collapsed, samples.off_manifold)
