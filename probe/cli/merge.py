"""``probe merge``: join the shards of a split extract or decode (``--shard i/N`` runs, killed torchrun runs).

Thin layer over probe.workflows.merge (``probe.merge``): what to merge and how is decided there.
"""

from __future__ import annotations

from pathlib import Path

import click

from probe.cli.console import emit_json, say, warn
from probe.workflows import merge as workflow


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--keep", is_flag=True, help="Keep the shard files after merging.")
@click.option("--json", "as_json", is_flag=True, help="Print what was merged as JSON on stdout.")
def merge(target: Path, keep: bool, as_json: bool) -> None:
    """Merge the shards of TARGET: a feature store (STORE.shards/*.h5) or a decode folder (OUT/shards/*/).

    Rows and records come out in the single-process order, each image (content hash) or (target, sample)
    once; rerunning a merge that was killed finishes it.
    """
    result = workflow.run(target, keep=keep, on_warning=warn)
    if result.store is not None:
        s = result.store
        say(f"merged {len(s.shards)} shards into {target}: " + ", ".join(f"{n} +{k} rows" for n, k in s.added.items())
            + (f"; {s.duplicates} duplicate images skipped" if s.duplicates else ""))
    else:
        say(f"merged decode shards into {target}: {len(result.records or [])} samples in manifest.jsonl")
    if as_json:
        emit_json(result.to_dict())
