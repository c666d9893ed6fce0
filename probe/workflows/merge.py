"""The merge workflow: join the parts of a split extract or decode (``probe.merge``, ``probe merge``).

TARGET says what it is by what lies beside or in it: ``STORE.shards/`` next to a feature store (the parts
of ``extract`` with ``shard=``), or ``OUT/shards/`` in a decode folder. :mod:`probe.workflows.extract.merge`
and :mod:`probe.workflows.decode.merge` do the joining in the single-process order; a merge killed half-way is
rerun and finishes.
"""

from __future__ import annotations

import time
from pathlib import Path

from probe.errors import UsageError
from probe.workflows.common import Note
from probe.workflows.decode.merge import decode_shard_root, merge_decodes
from probe.workflows.extract.merge import merge_stores, store_shard_dir
from probe.workflows.parts import MergeResult


def run(target: str | Path, *, keep: bool = False, on_warning: Note | None = None) -> MergeResult:
    """Merge the shards of ``target`` (a feature store or a decode folder); ``keep`` leaves the shard files."""
    target = Path(target)
    t0 = time.perf_counter()
    if store_shard_dir(target).is_dir() and not target.is_dir():
        result = MergeResult(target, store=merge_stores(target, keep=keep))
    elif decode_shard_root(target).is_dir():
        result = MergeResult(target, records=merge_decodes(target, keep=keep, on_warning=on_warning))
    else:
        raise UsageError(f"{target}: no shards to merge (no {store_shard_dir(target).name}/ beside a store, "
                         f"no shards/ in a decode folder)")
    result.seconds = time.perf_counter() - t0
    return result
