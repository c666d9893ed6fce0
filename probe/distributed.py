"""Which part of a job this process does: one of N shards, under torchrun or a scheduler's array.

Two ways to split a run, both deterministic (the same inputs give the same split):

* ``torchrun --nproc-per-node N [--nnodes M ...] -m probe extract|decode ...`` — torchrun sets RANK,
  WORLD_SIZE and LOCAL_RANK; ``runtime()`` joins the process group (nccl on GPUs, gloo on CPU) so the
  ranks can wait for each other and rank 0 can merge their shards when all are done;
* ``--shard i/N`` — no process group: the process does shard i and stops; ``probe merge`` joins the
  shards once all N are done (a SLURM array, separate machines, a cron loop).

Work is split by *batch*: batch b of the single-process run (the same members, in the same order) goes
to shard ``b mod N``. Every batch is computed exactly as it would be in one process, which is what makes
the merged output bit-identical to a single-process run on the same kind of device.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from probe.errors import UsageError

# a slow rank may finish hours after a fast one; the final rendezvous must not time out before it does
WAIT = timedelta(hours=float(os.environ.get("PROBE_DIST_TIMEOUT_HOURS", "72")))


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise UsageError(f"--shard {text!r}: expected i/N, e.g. 0/4")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def single(self) -> bool:
        return self.count == 1

    @property
    def name(self) -> str:
        """File-name stem of this shard's output: ``00001-of-00004``."""
        return f"{self.index:05d}-of-{self.count:05d}"

    def owns(self, batch: int) -> bool:
        return batch % self.count == self.index

    def batches(self, n_items: int, batch_size: int) -> list[list[int]]:
        """Positions of this shard's batches in the single-process batch grid of ``n_items`` items."""
        return [list(range(b, min(b + batch_size, n_items))) for i, b in enumerate(range(0, n_items, batch_size))
                if self.owns(i)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Runtime:
    """This process's shard, its device, and (under torchrun) the process group to wait on."""

    shard: Shard
    local_rank: int = 0
    group: bool = False  # under torchrun: the ranks wait for each other through torch.distributed
    owned: bool = False  # the process group was made by runtime(), so close() ends it (not a caller's own)

    @property
    def is_main(self) -> bool:
        return self.shard.index == 0

    def device(self, requested: str | None) -> str | None:
        """Under torchrun each rank takes its own GPU (cuda:LOCAL_RANK) unless a device was forced."""
        import torch

        if not self.group:
            return requested
        if requested in (None, "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def all_ok(self, ok: bool) -> bool:
        """Wait for every rank; True when every rank reports ``ok`` (a rank's failure stops the merge)."""
        if not self.group:
            return ok
        import torch
        import torch.distributed as dist

        device = "cpu"
        if dist.get_backend() == "nccl":
            device = f"cuda:{torch.cuda.current_device()}"
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def close(self) -> None:
        """End the process group if runtime() made it; a script's own group outlives the workflow."""
        if self.group and self.owned:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        self.group = False


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def runtime(shard: Shard | str | None = None, device: str | None = None) -> Runtime:
    """This process's Runtime: torchrun's rank, or ``shard`` (a Shard or ``"i/N"``), or the whole job."""
    if isinstance(shard, str):
        shard = Shard.parse(shard) if shard else None
    launched = torchrun_world()
    if launched is None:
        return Runtime(shard or Shard())
    if shard:
        raise UsageError("--shard splits a run without torchrun; under torchrun the ranks are the shards")
    rank, world, local = launched
    import torch
    import torch.distributed as dist

    use_nccl = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_nccl:
        torch.cuda.set_device(local % torch.cuda.device_count())
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=WAIT)
    return Runtime(Shard(rank, world), local_rank=local, group=True, owned=owned)


def take(items: Sequence, shard: Shard, batch_size: int) -> list:
    """The items of ``shard``'s batches, in order."""
    return [items[i] for batch in shard.batches(len(items), batch_size) for i in batch]
