"""``probe models list`` and ``probe models layers SPEC``."""

from __future__ import annotations

import click
from rich.table import Table

from probe.cli.console import console, emit_json
from probe.models.bundled import BUNDLED
from probe.models.registry import SPEC_FORMS, list_layers


@click.group()
def models() -> None:
    """Which networks and priors probe can load."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Bundled models with provenance, and the spec forms that name any other network."""
    rows = [{"spec": f"bundled:{m.name}", "kind": m.kind, "description": m.description, "data": m.data,
             "recipe": m.recipe, "licence": m.licence, "size_mb": round(m.size_bytes() / 1e6, 2),
             "installed": m.path.exists()} for m in BUNDLED.values()]
    if as_json:
        emit_json({"bundled": rows, "spec_forms": [{"form": f, "meaning": d} for f, d in SPEC_FORMS]})
        return
    table = Table(title="bundled models (no network needed)")
    for col in ("spec", "kind", "size", "data", "licence", "rebuild"):
        table.add_column(col, overflow="fold")
    for r in rows:
        size = f"{r['size_mb']} MB" if r["installed"] else "[red]missing[/]"
        table.add_row(r["spec"], r["kind"], size, r["data"], r["licence"], r["recipe"])
    out = console()
    out.print(table)
    forms = Table(title="spec forms")
    forms.add_column("form")
    forms.add_column("meaning")
    for f, d in SPEC_FORMS:
        forms.add_row(f, d)
    out.print(forms)


@models.command("layers")
@click.argument("spec")
@click.option("--weights", help="Local checkpoint or 'random' (timm/open_clip).")
@click.option("--json", "as_json", is_flag=True)
def layers(spec: str, weights: str | None, as_json: bool) -> None:
    """Every layer name of SPEC usable with --layer, with its output shape."""
    rows = list_layers(spec, weights)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"layers of {spec}")
    for col in ("name", "type", "output shape"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["type"], r["shape"])
    console().print(table)
