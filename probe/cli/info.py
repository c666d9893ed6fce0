"""``probe info`` and ``probe export``: look into a feature store, hand a group to other tools."""

from __future__ import annotations

from pathlib import Path

import click

from probe.cli.console import emit_json, print_table, say
from probe.store import FeatureStore
from probe.workflows.extract.pipeline import export_group


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable description on stdout.")
def info(store: Path, as_json: bool) -> None:
    """List the groups of STORE with rows, dimension and the attributes recording how they were made."""
    with FeatureStore(store, "r") as st:
        desc = st.describe()
    if as_json:
        emit_json(desc)
        return
    rows = []
    for g in desc["groups"]:
        a = g["attrs"]
        rows.append([g["name"], g["rows"], g["dim"], g["dtype"], "yes" if g["labelled"] else "-",
                     a.get("model_spec", ""), a.get("layer", ""), a.get("created", "")])
    print_table(str(store), ["group", "rows", "dim", "dtype", "labels", "model", "layer", "created"], rows)


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--group", help="Group to export (needed when the store holds several).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npy; paths go to OUT.paths.txt and labels to OUT.labels.npy.")
@click.option("--json", "as_json", is_flag=True)
def export(store: Path, group: str | None, out: Path, as_json: bool) -> None:
    """Write one group's features to a .npy file (rows in store order)."""
    result = export_group(store, group, out)
    if as_json:
        emit_json(result)
    else:
        say(f"wrote {result['rows']}x{result['dim']} from {result['group']} to {', '.join(result['files'])}")
