"""The part of a split extract that one process does: a ``shard=`` (``--shard i/N``) or a torchrun rank.

Each part writes its own store (``STORE.shards/000ii-of-000NN.h5``, rows tagged with their input position)
and skips images STORE already holds. A ``shard=`` part stops there: ``probe merge STORE`` joins the parts
once all are done (a scheduler's array, separate machines). Under torchrun every rank waits for the others,
then rank 0 merges and encodes the prompts into STORE, so STORE ends up as one process would have written it
(:mod:`probe.distributed` says why the split is bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from probe.distributed import Runtime
from probe.errors import InputError, UsageError
from probe.extraction import ExtractConfig, ExtractSummary, extract_images, extract_text
from probe.merging import MergeSummary, merge_stores, store_shard_dir, store_shard_path
from probe.models.encoder import Encoder
from probe.sources import Item

if TYPE_CHECKING:
    from probe.workflows.extract import ExtractResult


def check_shardable(out: str | Path | None, overwrite: bool) -> None:
    """A split run needs a store to merge into, and cannot replace one part by part."""
    if out is None:
        raise UsageError("a sharded extract (shard=, torchrun) writes shard stores to merge: give out=STORE")
    if overwrite:
        raise UsageError("--overwrite replaces groups of one store; with shards, delete STORE and STORE.shards/ "
                         "instead")


def extract_part(rt: Runtime, encoder: Encoder, paths: Sequence[Item], prompts: Sequence[str], store: Path,
                 config: ExtractConfig, result: ExtractResult, on_batch: Callable[[int, int], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
    """Extract this process's shard into its shard store and add its summary to ``result``; under torchrun
    wait for every rank, then on rank 0 merge and encode ``prompts``: its summaries become the merged run's.

    An interrupted part keeps its finished batches (rerun to resume); a failed or interrupted torchrun rank
    stops the merge on every rank (InputError)."""
    ok = False
    try:
        if paths:
            result.summaries.append(extract_images(encoder, paths, store_shard_path(store, rt.shard), config,
                                                   on_batch=on_batch, on_warning=on_warning, shard=rt.shard,
                                                   skip_stores=[store]))
        ok = not result.interrupted
    finally:
        all_ok = rt.all_ok(ok)  # every rank waits here, also when one failed (then nobody merges)
    if result.interrupted or not rt.group:
        return
    if not all_ok:
        raise InputError(f"{store}: a rank was interrupted or failed; finished batches are kept in "
                         f"{store_shard_dir(store)}; rerun the same command to resume")
    if not rt.is_main:
        return
    result.merged = merge_stores(store)
    text = [extract_text(encoder, prompts, store, config)] if prompts else []
    result.summaries = [merged_total(result.summaries, result.merged), *text]


def merged_total(parts: Sequence[ExtractSummary], merged: MergeSummary) -> ExtractSummary:
    """Rank 0's report after a merge: the rows the merge added, this rank's failures and time."""
    out = ExtractSummary(groups=list(merged.added))
    out.stored = max(merged.added.values(), default=0)
    out.skipped = sum(s.skipped for s in parts) + merged.duplicates
    out.failed = [f for s in parts for f in s.failed]
    out.seconds = sum(s.seconds for s in parts)
    return out
