"""``probe merge``: join the shards of a split extract or decode (``--shard i/N`` runs, killed torchrun runs)."""

from __future__ import annotations

from pathlib import Path

import click

from probe.cli.console import emit_json, say, warn
from probe.errors import UsageError
from probe.merging import decode_shard_root, merge_decodes, merge_stores, store_shard_dir


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--keep", is_flag=True, help="Keep the shard files after merging.")
@click.option("--json", "as_json", is_flag=True, help="Print what was merged as JSON on stdout.")
def merge(target: Path, keep: bool, as_json: bool) -> None:
    """Merge the shards of TARGET: a feature store (STORE.shards/*.h5) or a decode folder (OUT/shards/*/).

    Rows and records come out in the single-process order, each image (content hash) or (target, sample)
    once; rerunning a merge that was killed finishes it.
    """
    if store_shard_dir(target).is_dir() and not target.is_dir():
        summary = merge_stores(target, keep=keep)
        report = summary.to_dict()
        say(f"merged {len(summary.shards)} shards into {target}: "
            + ", ".join(f"{n} +{k} rows" for n, k in summary.added.items())
            + (f"; {summary.duplicates} duplicate images skipped" if summary.duplicates else ""))
    elif decode_shard_root(target).is_dir():
        records = merge_decodes(target, keep=keep, on_warning=warn)
        report = {"target": str(target), "records": len(records)}
        say(f"merged decode shards into {target}: {len(records)} samples in manifest.jsonl")
    else:
        raise UsageError(f"{target}: no shards to merge (no {store_shard_dir(target).name}/ beside a store, "
                         f"no shards/ in a decode folder)")
    if as_json:
        emit_json(report)
