"""``probe compare``: which attributes does a feature encode? (thin layer over :mod:`probe.workflows.compare`)."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from probe.cli.console import LateProgress, print_rich_table, quiet, say, warn
from probe.errors import UsageError
from probe.persistence.attributes import ATTRIBUTES, INDEPENDENT_CLASSIFIERS
from probe.persistence.samples import OFF_MANIFOLD_POLICIES
from probe.persistence.scoring import CompareResult
from probe.workflows import compare as workflow
from probe.workflows.compare import DEFAULT_CLASSIFIER

_STYLE = {"encoded": "bold green", "partly": "yellow", "free": "dim", "undefined": "dim italic",
          "circular": "magenta"}


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _attributes_table() -> Table:
    table = Table(title="Registered measurements "
                        "(model-based ones come from --classifier/--clip/--cross-model)")
    for col in ("name", "group", "kind", "dispersion", "measures"):
        table.add_column(col)
    for a in ATTRIBUTES.values():
        table.add_row(escape(a.name), escape(a.group), a.kind, a.dispersion_name, escape(a.description))
    return table


def _summary_table(result: CompareResult) -> Table:
    level = int(round(result.config.ci_level * 100))
    table = Table(title=f"Persistence over {len(result.targets)} targets "
                        f"(0 = encoded, 1 = free as in the reference: {escape(result.reference_source)})")
    table.add_column("#", justify="right")
    table.add_column("attribute")
    table.add_column("group")
    table.add_column("score", justify="right")
    table.add_column(f"{level}% CI", justify="right")
    table.add_column("scored", justify="right")
    table.add_column("reading")
    def row(rank: str, s) -> None:
        ci = "—" if math.isnan(s.ci_low) else f"{s.ci_low:.3f}–{s.ci_high:.3f}"
        n = f"{s.n_targets}/{s.n_targets + s.n_excluded}"
        if s.circular:
            reading = "(circular: the decoded network)"
        elif s.verdict == "undefined":
            reading = "undefined: " + ", ".join(s.excluded_reasons)
        else:
            reading = s.verdict
        table.add_row(rank, escape(s.name), escape(s.group), _fmt(s.mean), ci, n, escape(reading),
                      style=_STYLE.get(s.verdict))

    for i, s in enumerate(result.ranked, 1):
        row(str(i), s)
    if result.circular:
        table.add_section()
        for s in result.circular:
            row("—", s)
    for c in result.collapsed:
        table.add_section()
        table.add_row("—", escape(c["label"]), "colour", "—", "—", "—", escape("see brightness, contrast"),
                      style="dim")
    return table


def _notes(result: CompareResult) -> list[str]:
    """Lines under the table: which classifier read the class, what was collapsed, off-manifold counts."""
    out = []
    for s in result.summaries:
        if s.model and s.kind == "categorical" and s.group == "semantics" and s.model.get("role"):
            out.append(f"class attribute read by {s.model['spec']} ({s.model['role']}, not the decoded network)")
    out += [f"{c['label']}: {c['note']}" for c in result.collapsed]
    om = result.off_manifold
    if om and om["n_recorded"]:
        out.append(f"off-manifold samples: {om['n_flagged']} of {om['n_recorded']} ({om['share']:.0%}), "
                   f"policy {om['policy']}")
    elif om is not None:
        out.append("off-manifold flags: not recorded in this manifest (older decode): samples unchecked")
    return out


def _target_table(result: CompareResult, max_targets: int = 10) -> Table:
    """Attributes down, targets across (attributes outnumber the columns a terminal fits)."""
    shown = result.targets[:max_targets]
    more = len(result.targets) - len(shown)
    note = f" (first {len(shown)}; --targets-csv has all)" if more else ""
    table = Table(title="Per-target scores" + note)
    table.add_column("attribute")
    for t in shown:
        om = t.meta.get("off_manifold") or {}
        flag = (f" [{om['excluded']} off-manifold excl.]" if om.get("excluded") else
                f" [{om['flagged_scored']} off-manifold]" if om.get("flagged_scored") else "")
        table.add_column(escape(t.target_id + (f" ({t.label})" if t.label and t.label != t.target_id else "") + flag),
                         justify="right")
    for s in result.ranked + result.circular:
        table.add_row(escape(s.name + (" (circular)" if s.circular else "")),
                      *[_fmt(t.scores[s.name].score) for t in shown])
    return table


@click.command("compare")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path), required=False)
@click.option("--reference", "-r", type=click.Path(path_type=Path),
              help="Reference images (folder, searched recursively). Default: INPUT/baseline.")
@click.option("--attribute", "-a", "attribute_names", multiple=True, metavar="NAME[,NAME]",
              help="Pixel measurements to score (repeatable or comma-separated). Default: all registered.")
@click.option("--list-attributes", is_flag=True, help="List the registered measurements and exit.")
@click.option("--image", "image_kind", type=click.Choice(["best", "final"]), default="best",
              show_default=True,
              help="Which decoded image of each sample to measure (decode output directories).")
@click.option("--classifier", "classifiers", multiple=True, metavar="SPEC",
              help="Classifier whose predicted class is an attribute (repeatable; 'none' for no class). "
                   "Default: an independent classifier for the decoded network ("
                   + ", ".join(f"{v} for {k}" for k, v in INDEPENDENT_CLASSIFIERS.items())
                   + f"), else {DEFAULT_CLASSIFIER}. The decoded network's own class is marked circular.")
@click.option("--clip", "clip_spec", metavar="SPEC", help="CLIP model scoring the --prompt texts.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="Zero-shot attribute prompt for --clip, e.g. 'a red object' (repeatable).")
@click.option("--cross-model", "cross_models", multiple=True, metavar="SPEC",
              help="Another model whose features are an attribute (repeatable).")
@click.option("--cross-model-weights", metavar="PATH|random",
              help="Local checkpoint (or 'random') for the --cross-model architectures.")
@click.option("--device", default="auto", show_default=True, help="Device for model-based attributes.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the confidence intervals.")
@click.option("--ci", "ci_level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True, help="Confidence level.")
@click.option("--seed", type=click.IntRange(min=0, max=2**62), default=0, show_default=True,
              help="Seed of the bootstrap.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--allow-unequal", is_flag=True, help="Score groups even when their sample counts differ.")
@click.option("--off-manifold", "off_manifold", type=click.Choice(OFF_MANIFOLD_POLICIES), default="exclude",
              show_default=True,
              help="Samples the decode flagged off the prior's manifold (manifest 'off_manifold'): exclude them "
                   "from the scores, mark them, or keep them as any other.")
@click.option("--per-target", is_flag=True, help="Also print the per-target score table.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of tables.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write the ranked summary as CSV.")
@click.option("--targets-csv", type=click.Path(path_type=Path), help="Write per-target scores as CSV.")
@click.option("--chart", "chart_path", type=click.Path(path_type=Path),
              help="Write the persistence chart (PNG).")
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Write a self-contained HTML report (chart, contact sheets, per-target tables).")
def compare(
    input_path: Path | None, reference: Path | None, attribute_names: tuple[str, ...], list_attributes: bool,
    image_kind: str, classifiers: tuple[str, ...], clip_spec: str | None, prompts: tuple[str, ...],
    cross_models: tuple[str, ...], cross_model_weights: str | None, device: str, n_boot: int, ci_level: float,
    seed: int, batch_size: int,
    allow_unequal: bool, off_manifold: str, per_target: bool, as_json: bool, csv_path: Path | None,
    targets_csv: Path | None, chart_path: Path | None, html_path: Path | None,
) -> None:
    """Rank attributes by how persistently INPUT's decoded samples share them.

    INPUT is a decode/interpolate/perturb output directory (groups = targets of its manifest.jsonl,
    reference = its unguided baseline samples) or a folder with one sub-folder of images per group
    (reference = --reference DIR or a 'baseline' sub-folder). A score near 0 means the attribute stays
    fixed across samples of a target (the feature encodes it); near 1, it varies as freely as in the
    reference.
    """
    out = Console(quiet=quiet())
    if list_attributes:
        out.print(_attributes_table())
        return
    if input_path is None:
        raise UsageError("give INPUT: a decode output directory or a folder of image sub-folders")
    with LateProgress("measuring") as bar:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            bar.update(done[0])

        result = workflow.run(input_path, reference=reference, attributes=attribute_names, image=image_kind,
                              classifiers=classifiers or None, clip=clip_spec, prompts=prompts,
                              cross_models=cross_models, cross_model_weights=cross_model_weights,
                              device=None if device == "auto" else device, n_boot=n_boot, ci_level=ci_level,
                              seed=seed, batch_size=batch_size, allow_unequal=allow_unequal,
                              off_manifold=off_manifold, csv=csv_path,
                              targets_csv=targets_csv, chart=chart_path, html=html_path, progress=advance,
                              on_start=bar.start, on_note=lambda m: say(f"note: {m}", style="dim"))

    for w in result.warnings:
        warn(w)
    if as_json:
        click.echo(result.to_json())
        return
    print_rich_table(_summary_table(result), out)
    for line in _notes(result):
        say(line, style="dim")
    if per_target:
        print_rich_table(_target_table(result), out)
    for label, p in (("summary CSV", csv_path), ("per-target CSV", targets_csv), ("chart", chart_path),
                     ("report", html_path)):
        if p:
            say(f"wrote {label}: {p}")
