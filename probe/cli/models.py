"""``probe models list`` and ``probe models layers SPEC``."""

from __future__ import annotations

import click

from probe.cli.console import emit_json, print_table
from probe.models.bundled import BUNDLED
from probe.models.registry import SPEC_FORMS, list_layers


@click.group()
def models() -> None:
    """Which networks and priors probe can load."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Bundled models with provenance, and the spec forms that name any other network."""
    rows = [m.describe() for m in BUNDLED.values()]
    if as_json:
        emit_json({"bundled": rows, "spec_forms": [{"form": f, "meaning": d} for f, d in SPEC_FORMS]})
        return
    print_table("bundled models (no network needed)", ["spec", "kind", "size", "data", "licence", "rebuild"],
                [[r["spec"], r["kind"], f"{r['size_mb']} MB" if r["installed"] else "missing", r["data"],
                  r["licence"], r["recipe"]] for r in rows])
    print_table("spec forms", ["form", "meaning"], [list(f) for f in SPEC_FORMS])


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
    print_table(f"layers of {spec}", ["name", "type", "output shape"],
                [[r["name"], r["type"], r["shape"]] for r in rows])
