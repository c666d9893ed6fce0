"""The part of a split decode that one process does: a ``shard=`` (``--shard i/N``) or a torchrun rank.

Each part decodes the batches it owns into ``OUT/shards/000ii-of-000NN/`` (a decode folder of its own,
resumable like any other). A ``shard=`` part stops there: ``probe merge OUT`` (:func:`probe.merge`) joins
the parts once all are done (a scheduler's array, separate machines). Under torchrun every rank waits for
the others, then rank 0 merges, so OUT ends up as one process would have written it (:mod:`probe.distributed`
says why the split is bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.decoding import DecodeEvent, DecodeSummary
from probe.distributed import Runtime
from probe.errors import ProbeError, UsageError
from probe.models.encoder import Encoder
from probe.targets import Target
from probe.workflows import merge
from probe.workflows.common import Note
from probe.workflows.options import DecodeOptions

if TYPE_CHECKING:
    from probe.workflows.decode import DecodeResult


def check_shardable(out: str | Path | None) -> None:
    """A split decode writes shard folders to merge: it needs a folder that outlives the call."""
    if out is None:
        raise UsageError("a sharded decode (shard=, torchrun) writes shard folders to merge: give out=FOLDER")


def decode_part(rt: Runtime, out: Path, encoder: Encoder, targets: list[Target], prior: Any,
                options: DecodeOptions, on_event: Callable[[DecodeEvent], None] | None = None,
                on_warning: Note | None = None) -> DecodeResult:
    """Decode this process's shard of ``targets`` into its shard folder; under torchrun wait for every rank,
    then on rank 0 merge: its result becomes the merged run's (records, images, total time).

    A failed rank stops the merge on every rank (ProbeError); finished batches are kept for a rerun."""
    from probe.workflows.decode import decode_into, decoded

    ok = False
    try:
        part = decode_into(out, encoder, targets, prior, options, on_event, shard=rt.shard, on_warning=on_warning)
        ok = True
    finally:
        all_ok = rt.all_ok(ok)  # every rank waits here, also when one failed (then nobody merges)
    if not rt.group:
        return part
    if not all_ok:
        raise ProbeError(f"{out}: another rank failed; every finished batch is kept in {out / 'shards'}, "
                         "rerun the same command to resume")
    if not rt.is_main:
        return part
    joined = merge.run(out, on_warning=on_warning)
    s = part.summary
    summary = DecodeSummary(out=out, records=joined.records or [], seconds=s.seconds + joined.seconds,
                            n_targets=len(targets), samples=options.samples, baseline_seconds=s.baseline_seconds,
                            resumed=s.resumed)
    return decoded(summary, targets, merged=joined)
