"""The persistence chart (PNG) and the self-contained HTML report of ``probe compare``.

The HTML page (a jinja2 template, ``templates/compare_report.html``) inlines every image as base64 so it can
be mailed, attached to an issue or opened
from a CI artifact without the decode directory beside it. Matplotlib runs on the Agg backend so
rendering works on headless machines.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from probe.persistence.samples import SampleGroup, SampleSet, load_image
from probe.persistence.scoring import CompareResult

#: bar colours by verdict, so the chart reads at a glance
VERDICT_COLOURS = {"encoded": "#2b8a3e", "partly": "#e8a33d", "free": "#868e96", "undefined": "#ced4da",
                   "circular": "#ae3ec9"}


@dataclass
class ReportOptions:
    """Sizes for the contact sheets and how much of a large run to show."""

    tile: int = 96
    max_groups: int = 24
    max_samples: int = 8
    max_target_tables: int = 50


def persistence_chart(result: CompareResult, path: Path | str | None = None, dpi: int = 120) -> bytes:
    """Bar chart of mean persistence with bootstrap CIs, most persistent on top; returns PNG bytes.

    Undefined attributes are listed by name below the axis rather than drawn as zero-length bars,
    which would read as "perfectly encoded".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defined = [s for s in result.summaries if not math.isnan(s.mean)]
    undefined = [s.name for s in result.summaries if math.isnan(s.mean)]
    n = max(len(defined), 1)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * n))
    try:
        y = np.arange(len(defined))[::-1]
        means = np.array([s.mean for s in defined])
        lo = np.array([s.mean - s.ci_low if not math.isnan(s.ci_low) else 0.0 for s in defined])
        hi = np.array([s.ci_high - s.mean if not math.isnan(s.ci_high) else 0.0 for s in defined])
        colours = [VERDICT_COLOURS.get(s.verdict, "#868e96") for s in defined]
        if defined:
            ax.barh(y, means, color=colours, xerr=np.vstack([lo, hi]), capsize=3,
                    error_kw={"elinewidth": 1, "ecolor": "#343a40"})
            # a dot at each mean, so a score of exactly 0 (a zero-length bar) is still visible
            ax.scatter(means, y, s=14, c=colours, edgecolors="#343a40", linewidths=0.6, zorder=3)
            ax.set_yticks(y, [s.name + (" (circular)" if s.circular else "") for s in defined], fontsize=8)
        else:
            ax.set_yticks([])
        ax.axvline(1.0, color="#c92a2a", lw=1, ls="--")
        ax.text(1.0, 1.0, " free (as reference)", color="#c92a2a", fontsize=7, va="bottom",
                transform=ax.get_xaxis_transform())
        xmax = max([1.1] + [s.ci_high for s in defined if not math.isnan(s.ci_high)] + list(means))
        ax.set_xlim(0, xmax * 1.05)
        level = int(round(result.config.ci_level * 100))
        ax.set_xlabel("persistence score (0 = encoded, 1 = free); "
                      f"bars: mean over targets, {level}% bootstrap CI", fontsize=8)
        if undefined:
            ax.set_title("undefined: " + ", ".join(undefined), fontsize=7, loc="left", color="#495057")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[Path]]], tile: int = 96, max_samples: int = 8, title: str | None = None,
    targets: Sequence[Path | None] | None = None, captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """A grid with one labelled row per group (its first ``max_samples`` images), drawn by
    :func:`probe.render.sheets.image_grid` so it looks like the decode/interpolate sheets.

    ``targets`` (one per row, None for none) puts the target's picture first in its row, captioned
    "target"; ``captions`` (per row, per sample) go under the samples.
    """
    from probe.render.sheets import image_grid

    cells: list[list[np.ndarray | None]] = [[load_image(p) for p in list(paths)[:max_samples]] for _, paths in rows]
    caps = [list(c)[:max_samples] for c in captions] if captions is not None else [[""] * len(r) for r in cells]
    caps = [c + [""] * (len(r) - len(c)) for c, r in zip(caps, cells, strict=True)]
    if targets is not None and any(t is not None for t in targets):
        cells = [[None if t is None else load_image(t)] + r for t, r in zip(targets, cells, strict=True)]
        caps = [["target" if t is not None else ""] + c for t, c in zip(targets, caps, strict=True)]
    labels = [label for label, _ in rows]
    return image_grid(cells, captions=caps if any(x for c in caps for x in c) else None,
                      row_labels=labels if any(labels) else None, title=title, cell_size=tile)


def _target_path(meta: dict) -> Path | None:
    """The target's picture recorded by the decode, only if it lies inside the run folder (checked at load)."""
    p = meta.get("target_image")
    return Path(p) if p and Path(p).is_file() else None


def _sample_captions(group: SampleGroup) -> list[str]:
    return ["off-manifold" if f else "" for f in group.off_manifold] if group.off_manifold else []


def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _image_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _png_b64(buf.getvalue())


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


@functools.cache
def _templates():
    """The report templates shipped in ``probe/render/templates/`` (HTML-escaped by default)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("probe.render", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    return env


def html_report(
    result: CompareResult, samples: SampleSet, path: Path | str | None = None,
    options: ReportOptions | None = None,
) -> str:
    """One self-contained HTML page (``templates/compare_report.html``): summary, chart, contact sheets and
    per-target tables."""
    opt = options or ReportOptions()
    shown = samples.groups[: opt.max_groups]
    rows: list[tuple[str, Sequence[Path]]] = [
        (g.group_id if not g.label or g.label == g.group_id else f"{g.group_id} ({g.label})", g.paths)
        for g in shown
    ]
    rows.append(("reference", samples.reference))
    targets = [_target_path(g.meta) for g in shown] + [None]
    captions = [_sample_captions(g) for g in shown] + [[]]
    sheet = contact_sheet(rows, opt.tile, opt.max_samples, targets=targets, captions=captions)

    order = [s.name for s in result.summaries]
    circular = {s.name for s in result.circular}
    groups = {g.group_id: g for g in samples.groups}
    per_target = []
    for t in result.targets[: opt.max_target_tables]:
        om = t.meta.get("off_manifold") or {}
        g = groups.get(t.target_id)
        strip = None
        if g is not None and (g.paths or _target_path(g.meta)):
            strip = _image_b64(contact_sheet([("", g.paths)], opt.tile, opt.max_samples,
                                             targets=[_target_path(g.meta)], captions=[_sample_captions(g)]))
        per_target.append({
            "id": t.target_id, "n_samples": t.n_samples, "strip": strip,
            "title": t.target_id + (f" — {t.label}" if t.label and t.label != t.target_id else ""),
            "note": (f", {om['excluded']} off-manifold excluded" if om.get("excluded") else
                     f", {om['flagged_scored']} off-manifold (scored)" if om.get("flagged_scored") else ""),
            "rows": [(name, name in circular, t.scores[name]) for name in order],
        })
    page = _templates().get_template("compare_report.html").render(
        r=result, opt=opt, chart=_png_b64(persistence_chart(result)), sheet=_image_b64(sheet),
        level=int(round(result.config.ci_level * 100)), has_targets=any(t is not None for t in targets),
        kind=samples.kind, n_groups=len(samples.groups), per_target=per_target,
        more_targets=max(len(result.targets) - opt.max_target_tables, 0))
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
