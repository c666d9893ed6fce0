"""The merge workflow: join the parts of a split extract or decode (``probe.merge``, ``probe merge``).

TARGET says what it is by what lies beside or in it: ``STORE.shards/`` next to a feature store (the parts
of ``extract`` with ``shard=``), or ``OUT/shards/`` in a decode folder. :mod:`probe.merging` does the
joining in the single-process order; a merge killed half-way is rerun and finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.errors import UsageError
from probe.manifest import SampleRecord
from probe.merging import MergeSummary, decode_shard_root, merge_decodes, merge_stores, store_shard_dir
from probe.workflows.common import Note


@dataclass
class MergeResult:
    """A merged feature store (``store``: rows added per group) or decode folder (``records``, in order),
    and how long the merge took."""

    target: Path
    store: MergeSummary | None = None
    records: list[SampleRecord] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        if self.store is not None:
            return self.store.to_dict()
        return {"target": str(self.target), "records": len(self.records or [])}


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
