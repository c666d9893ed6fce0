"""The one protocol of a split run (extract and decode): a ``shard=`` part (``--shard i/N``) or a torchrun rank.

Each part writes its own output (a shard store ``STORE.shards/000ii-of-000NN.h5``, a shard folder
``OUT/shards/000ii-of-000NN/``), resumable like any other. A ``shard=`` part stops there: ``probe merge``
(:func:`probe.merge`) joins the parts once all are done (a scheduler's array, separate machines). Under
torchrun every rank waits for the others (also when one failed: then nobody merges), then rank 0 merges, so
the output ends up as one process would have written it (:mod:`probe.distributed` says why the split is
bit-identical). :func:`run_part` is that protocol; the workflows say what a part and a merge are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from probe.distributed import Runtime
from probe.errors import ProbeError, UsageError
from probe.manifest import SampleRecord

T = TypeVar("T")

#: store attributes a merge recomputes instead of copying as the group's record
NOT_RECORD = {"layer", "kind", "feature_shape", "probe_version", "torch_version", "created", "updated",
              "label_names"}


def check_shardable(out: str | Path | None, what: str, parts: str, out_name: str) -> None:
    """A split run writes parts to merge: it needs an output that outlives the call."""
    if out is None:
        raise UsageError(f"a sharded {what} (shard=, torchrun) writes shard {parts} to merge: give out={out_name}")


def run_part(rt: Runtime, part: Callable[[], T], failed: Callable[[], ProbeError],
             finished: Callable[[T], bool] = lambda _: True) -> tuple[T, bool]:
    """Run this process's ``part``; under torchrun wait for every rank. Returns the part's result and whether
    this process should now merge (rank 0 of a torchrun group whose every rank finished).

    A part that raises stops the merge on every rank (its exception propagates here); one that did not
    ``finished`` (interrupted) returns without merging; a rank that sees another rank fail raises
    ``failed()``. Finished batches are kept for a rerun either way."""
    ok = False
    try:
        result = part()
        ok = finished(result)
    finally:
        all_ok = rt.all_ok(ok)  # every rank waits here, also when one failed (then nobody merges)
    if not ok or not rt.group:
        return result, False
    if not all_ok:
        raise failed()
    return result, rt.is_main


@dataclass
class MergeSummary:
    """A merged feature store: the shards joined, rows added per group, duplicates skipped."""

    target: Path
    shards: list[str]
    added: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def to_dict(self) -> dict:
        return {"target": str(self.target), "shards": self.shards, "added": self.added,
                "duplicates_skipped": self.duplicates}


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
