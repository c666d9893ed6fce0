"""The persistence chart (PNG) and the self-contained HTML report of ``probe compare``.

The HTML page inlines every image as base64 so it can be mailed, attached to an issue or opened
from a CI artifact without the decode directory beside it. Matplotlib runs on the Agg backend so
rendering works on headless machines.
"""

from __future__ import annotations

import base64
import html
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


_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:2em;color:#212529;max-width:1100px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border-bottom:1px solid #dee2e6;padding:3px 10px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.encoded{color:#2b8a3e;font-weight:600}.partly{color:#b7791f}.free{color:#868e96}.undefined{color:#adb5bd}
.meta{color:#495057;font-size:0.9em}.warn{color:#c92a2a}
img{max-width:100%}details{margin-bottom:1em}summary{cursor:pointer;font-weight:600}
"""


def html_report(
    result: CompareResult, samples: SampleSet, path: Path | str | None = None,
    options: ReportOptions | None = None,
) -> str:
    """One self-contained HTML page: summary, chart, contact sheets and per-target tables."""
    opt = options or ReportOptions()
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>probe compare: ",
        esc(result.source), "</title><style>", _CSS, "</style></head><body>",
        "<h1>Which attributes does the feature encode?</h1>",
        f"<p class='meta'>Input: <code>{esc(result.source)}</code> ({esc(result.kind)}), "
        f"{len(result.targets)} targets; reference: {esc(result.reference_source)} "
        f"({result.n_reference} images). Score = dispersion across a target's decoded samples ÷ "
        "dispersion across the reference: near 0 the attribute persists (the feature encodes it), "
        "near 1 it varies as freely as in the reference.</p>",
    ]
    om = result.off_manifold
    if om is not None:
        if om["n_recorded"]:
            parts.append(f"<p class='meta'>Off-manifold samples (the decode's realism check): {om['n_flagged']} of "
                         f"{om['n_recorded']} ({om['share']:.0%}); policy <b>{esc(om['policy'])}</b>"
                         + (f", {sum(om['excluded'].values())} excluded from the scores" if om["excluded"] else "")
                         + ".</p>")
        else:
            parts.append("<p class='meta'>Off-manifold flags: not recorded in this manifest (an older decode); "
                         "samples unchecked.</p>")
    for w in result.warnings:
        parts.append(f"<p class='warn'>{esc(w)}</p>")
    parts.append(f"<img alt='persistence chart' src='{_png_b64(persistence_chart(result))}'>")

    level = int(round(result.config.ci_level * 100))
    parts.append(f"<h2>Attributes, most to least persistent</h2><table><tr><th>#</th><th>attribute</th>"
                 f"<th>group</th><th>kind</th><th>score</th><th>{level}% CI</th><th>targets</th>"
                 "<th>reading</th><th>measures</th></tr>")
    def row(rank: str, s) -> str:
        excl = f" (+{s.n_excluded} excl.)" if s.n_excluded else ""
        reading = "(circular: the decoded network)" if s.circular else s.verdict
        return (f"<tr><td>{rank}</td><td>{esc(s.name)}</td><td>{esc(s.group)}</td><td>{esc(s.kind)}</td>"
                f"<td class='num'>{_fmt(s.mean)}</td><td class='num'>{_fmt(s.ci_low)} – {_fmt(s.ci_high)}</td>"
                f"<td class='num'>{s.n_targets}{excl}</td><td class='{esc(s.verdict)}'>{esc(reading)}</td>"
                f"<td class='meta'>{esc(s.description)}</td></tr>")

    for i, s in enumerate(result.ranked, 1):
        parts.append(row(str(i), s))
    if result.circular:
        parts.append("<tr><th colspan='9'>Circular: measured by the network that was decoded (its agreement is "
                     "no evidence: the decode optimised it), not ranked</th></tr>")
        parts += [row("—", s) for s in result.circular]
    for c in result.collapsed:
        parts.append(f"<tr><td>—</td><td>{esc(c['label'])}</td><td>colour</td><td></td><td class='num'>—</td>"
                     f"<td></td><td></td><td class='undefined'>see brightness, contrast</td>"
                     f"<td class='meta'>{esc(c['note'])}</td></tr>")
    parts.append("</table>")

    shown = samples.groups[: opt.max_groups]
    rows: list[tuple[str, Sequence[Path]]] = [
        (g.group_id if not g.label or g.label == g.group_id else f"{g.group_id} ({g.label})", g.paths)
        for g in shown
    ]
    rows.append(("reference", samples.reference))
    targets = [_target_path(g.meta) for g in shown] + [None]
    captions = [_sample_captions(g) for g in shown] + [[]]
    parts.append("<h2>Contact sheet</h2>")
    if any(t is not None for t in targets):
        parts.append("<p class='meta'>First column: the target's own picture (the decode's copy in the run "
                     "folder).</p>")
    elif samples.kind == "decode":
        parts.append("<p class='meta'>No target pictures in the run folder (targets without a picture, or a "
                     "decode older than OUT/targets/).</p>")
    if len(samples.groups) > opt.max_groups:
        parts.append(f"<p class='meta'>first {opt.max_groups} of {len(samples.groups)} targets</p>")
    sheet = contact_sheet(rows, opt.tile, opt.max_samples, targets=targets, captions=captions)
    parts.append(f"<img alt='contact sheet' src='{_image_b64(sheet)}'>")

    parts.append("<h2>Per target</h2>")
    order = [s.name for s in result.summaries]
    circular = {s.name for s in result.circular}
    groups = {g.group_id: g for g in samples.groups}
    for t in result.targets[: opt.max_target_tables]:
        title = t.target_id + (f" — {t.label}" if t.label and t.label != t.target_id else "")
        om = t.meta.get("off_manifold") or {}
        note = (f", {om['excluded']} off-manifold excluded" if om.get("excluded") else
                f", {om['flagged_scored']} off-manifold (scored)" if om.get("flagged_scored") else "")
        parts.append(f"<details><summary>{esc(title)} ({t.n_samples} samples{esc(note)})</summary>")
        g = groups.get(t.target_id)
        if g is not None and (g.paths or _target_path(g.meta)):
            strip = contact_sheet([("", g.paths)], opt.tile, opt.max_samples, targets=[_target_path(g.meta)],
                                  captions=[_sample_captions(g)])
            parts.append(f"<img alt='samples of {esc(t.target_id)}' src='{_image_b64(strip)}'>")
        parts.append("<table><tr><th>attribute</th><th>score</th><th>within</th><th>reference</th>"
                     "<th>note</th></tr>")
        for name in order:
            sc = t.scores[name]
            shown_name = name + (" (circular)" if name in circular else "")
            parts.append(f"<tr><td>{esc(shown_name)}</td><td class='num'>{_fmt(sc.score)}</td>"
                         f"<td class='num'>{_fmt(sc.within)}</td><td class='num'>{_fmt(sc.reference)}</td>"
                         f"<td class='meta'>{esc(sc.reason or '')}</td></tr>")
        parts.append("</table></details>")
    if len(result.targets) > opt.max_target_tables:
        parts.append(f"<p class='meta'>{len(result.targets) - opt.max_target_tables} more targets in the "
                     "JSON/CSV output</p>")
    parts.append("</body></html>")
    page = "".join(parts)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
