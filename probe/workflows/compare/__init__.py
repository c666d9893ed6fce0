"""The compare workflow: which attributes persist across the decoded samples of a target
(``probe.compare``, ``probe compare``). Scoring lives in :mod:`probe.persistence.scoring`, the samples in
:mod:`probe.persistence.samples`, the measurements in :mod:`probe.persistence.attributes`,
the chart and HTML report in :mod:`probe.render.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from probe.errors import ProbeError, UsageError
from probe.persistence.attributes import (
    FALLBACK_CLASSIFIER,
    Attribute,
    ModelAttributeOptions,
    default_classifier,
    get_attributes,
    model_attributes,
)
from probe.persistence.samples import load_samples
from probe.persistence.scoring import CompareConfig, CompareResult
from probe.persistence.scoring import compare as score
from probe.workflows.common import Note

DEFAULT_CLASSIFIER = FALLBACK_CLASSIFIER  # when the decoded encoder has no independent classifier
IMAGE_KEYS = {"best": "image", "final": "final_image"}


def model_attrs(classifiers: Sequence[str] | None = None, clip: str | None = None, prompts: Sequence[str] = (),
                cross_models: Sequence[str] = (), cross_model_weights: str | None = None,
                device: str | None = None, batch_size: int = 32, on_note: Note | None = None,
                decoded: Sequence[str] = ()) -> list[Attribute]:
    """Model-based attributes. ``classifiers=None`` means the default classifier — the independent one for
    the ``decoded`` encoder (``INDEPENDENT_CLASSIFIERS``), else ``DEFAULT_CLASSIFIER`` — skipped with a note
    when it cannot load; ``'none'`` among them means no class attribute."""
    explicit = [c for c in classifiers or () if c.lower() != "none"]
    out: list[Attribute] = []
    if classifiers is None or len(classifiers) == 0:
        spec, role = default_classifier(decoded)
        try:
            out += model_attributes(ModelAttributeOptions(classifiers=[spec], device=device, batch_size=batch_size,
                                                          classifier_roles={spec: role} if role else {}))
        except (ProbeError, ImportError, OSError, RuntimeError) as e:
            if on_note:
                on_note(f"default classifier {spec} unavailable ({e}); no class attribute "
                        "(use --classifier SPEC)")
    out += model_attributes(ModelAttributeOptions(
        classifiers=explicit, clip=clip, prompts=list(prompts), cross_models=list(cross_models),
        cross_model_weights=cross_model_weights, device=device, batch_size=batch_size,
    ))
    return out


def run(input: Any, *, reference: str | Path | None = None, attributes: Sequence[str] | None = None,
        image: str = "best", classifiers: Sequence[str] | None = None, clip: str | None = None,
        prompts: Sequence[str] = (), cross_models: Sequence[str] = (), cross_model_weights: str | None = None,
        device: str | None = None, n_boot: int = 1000, ci_level: float = 0.95, seed: int = 0,
        batch_size: int = 32, allow_unequal: bool = False, off_manifold: str = "exclude",
        csv: str | Path | None = None,
        targets_csv: str | Path | None = None, chart: str | Path | None = None, html: str | Path | None = None,
        progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
        on_note: Note | None = None) -> CompareResult:
    """Rank attributes by how persistently the samples of each target share them (0 = encoded, 1 = free).

    ``input`` is a decode/interpolate/perturb output folder, a :class:`~probe.workflows.decode.DecodeResult`
    decoded with ``out=`` (or anything with an ``.out`` folder), or a folder with one sub-folder of images
    per group. ``attributes`` names pixel measurements (default: all registered); ``classifiers``,
    ``clip`` + ``prompts`` and ``cross_models`` add model-based ones. ``csv``, ``targets_csv``, ``chart`` and
    ``html`` write the reports ``probe compare`` writes. ``on_start(n_images)`` then ``progress(n)`` report
    the measuring. The report files are checked first, so a path that cannot be written fails before the
    (slow) measuring.
    """
    from probe.outputs import check_writable_file

    for option, path in (("--csv", csv), ("--targets-csv", targets_csv), ("--chart", chart), ("--html", html)):
        check_writable_file(path, option)
    folder = getattr(input, "out", input)
    if folder is None:
        raise UsageError("compare reads a decode output folder: decode with out=FOLDER first")
    if image not in IMAGE_KEYS:
        raise UsageError(f"image must be one of {', '.join(IMAGE_KEYS)}, not {image!r}")
    samples = load_samples(Path(folder), reference, IMAGE_KEYS[image], allow_unequal, off_manifold)
    config = CompareConfig(n_boot=n_boot, ci_level=ci_level, seed=seed, batch_size=batch_size)
    names = [v.strip() for item in attributes or () for v in str(item).split(",") if v.strip()]
    attrs = get_attributes(names or None)
    attrs += model_attrs(classifiers, clip, prompts, cross_models, cross_model_weights, device, batch_size, on_note,
                         [str(d["spec"]) for d in samples.decoded_encoders])
    if on_start:
        on_start(samples.n_images)
    result = score(samples, attrs, config, progress=progress)
    if csv:
        Path(csv).write_text(result.to_csv(), encoding="utf-8")
    if targets_csv:
        Path(targets_csv).write_text(result.to_csv(per_target=True), encoding="utf-8")
    if chart or html:
        from probe.render.report import html_report, persistence_chart

        if chart:
            persistence_chart(result, Path(chart))
        if html:
            html_report(result, samples, Path(html))
    return result
