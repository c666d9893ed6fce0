"""The decode workflow: target features -> images whose features match them (``probe.decode``, ``probe decode``).

:func:`run` takes the encoder, the targets in any form (:func:`probe.workflows.common.as_targets`, including
``probe decode``'s options as :class:`probe.targets.Targets`), the prior and the decode options, runs the
pipeline of :mod:`probe.workflows.decode.pipeline` into ``out`` (or a temporary folder) and returns a
:class:`DecodeResult`
holding the images as one tensor with their distances and manifest records. A run split into shards
(``shard=``, or the ranks of torchrun: :mod:`probe.workflows.parts`) is merged by :mod:`.merge`. ``probe decode`` only
parses options into this ``run`` and prints what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probe.diffusion.priors import load_prior
from probe.distributed import Runtime, Shard, runtime
from probe.errors import ProbeError
from probe.manifest import SampleRecord
from probe.models.encoder import Encoder
from probe.targets import Target, Targets
from probe.workflows.common import Note, as_targets, asked_device, load_on, output_dir, store_of
from probe.workflows.decode.merge import decode_shard_dir, merge_decodes
from probe.workflows.decode.pipeline import DecodeEvent, DecodeSummary, decode_targets
from probe.workflows.options import DecodeOptions
from probe.workflows.parts import MergeResult, check_shardable, run_part


@dataclass(frozen=True)
class DecodePlan:
    """What this process is about to decode, handed to ``on_start`` once the encoder and the targets are
    known (before the prior loads), so a caller can tell whether this process speaks for the run."""

    encoder: Encoder
    targets: list[Target]
    out: Path | None  # None: a temporary folder
    shard: Shard = Shard()
    torchrun: bool = False  # the shards are torchrun's ranks, which wait for each other; rank 0 merges

    @property
    def shard_dir(self) -> Path | None:
        """Where a part's samples wait for the merge (``OUT/shards/00001-of-00004/``); None for a whole run."""
        return None if self.shard.single or self.out is None else decode_shard_dir(self.out, self.shard)

    @property
    def speaks(self) -> bool:
        """False on torchrun ranks other than 0: rank 0 speaks for the whole run."""
        return not self.torchrun or self.shard.index == 0


@dataclass
class DecodeResult:
    """Decoded samples in manifest order (target by target, samples within a target).

    A ``shard=`` part or a torchrun rank holds its own part's records (``images`` empty); after a torchrun
    merge rank 0 holds the merged run's records and images, and ``merged`` the merge itself."""

    images: torch.Tensor  # [N, C, H, W] in [0, 1]: the best image of each sample, as saved (8-bit)
    distances: torch.Tensor  # [N] squared feature distance each image reached
    records: list[SampleRecord]
    targets: list[Target]
    summary: DecodeSummary
    out: Path | None  # the output folder, None when it was temporary
    plan: DecodePlan | None = None
    merged: MergeResult | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def awaits_merge(self) -> bool:
        """A finished ``shard=`` part: its samples wait in ``plan.shard_dir`` until every part is merged."""
        p = self.plan
        return p is not None and not p.shard.single and not p.torchrun

    @property
    def has_report(self) -> bool:
        """Whether this process reports the run: a whole run, or torchrun's rank 0 after the merge."""
        return self.plan is None or self.plan.shard.single or self.merged is not None

    def of_target(self, target_id: str) -> torch.Tensor:
        """The images decoded from one target, [samples, C, H, W]."""
        idx = [i for i, r in enumerate(self.records) if r.target_id == target_id]
        if not idx:
            raise KeyError(f"no target {target_id!r}; targets: {', '.join(t.id for t in self.targets)}")
        return self.images[idx]

    def to_dict(self) -> dict[str, Any]:
        return self.summary.to_dict()


def read_images(out: Path, records: list[SampleRecord]) -> torch.Tensor:
    """The records' best images as one [N, C, H, W] tensor in [0, 1]."""
    from probe.images import read_image01

    if not records:
        return torch.empty(0)
    return torch.stack([read_image01(out / r.image) for r in records])


def run(encoder: Any, target: Any, *, prior: Any = None, out: str | Path | None = None,
        samples: int | None = None, schedule: str | None = None, steps: int | None = None,
        options: DecodeOptions | None = None, group: str | None = None, device: str | None = None,
        shard: Shard | str | None = None, on_start: Callable[[DecodePlan], None] | None = None,
        on_event: Callable[[DecodeEvent], None] | None = None, on_warning: Note | None = None,
        **overrides: Any) -> DecodeResult:
    """Decode ``target`` with ``encoder`` and the diffusion ``prior`` (default ``bundled:fashion-ddpm``).

    ``target``: any form :func:`~probe.workflows.common.as_targets` takes, e.g. a feature vector or matrix,
    an image tensor, ``"F.h5:ROW"``, or ``probe decode``'s options as :class:`probe.targets.Targets`
    (store rows, image files, CLIP prompts, vector files). ``encoder`` is a spec, a module, an Encoder or
    :class:`~probe.workflows.options.EncoderOptions`; None (or options without a spec) uses the encoder
    that made the store the targets name. ``group`` is the store group of ``"F.h5:ROW"`` strings.

    ``samples``, ``schedule`` (``auto``, the default: ``pooled`` where the prior's seed pool is at hand, else
    ``balanced``; or ``fast``, ``balanced``, ``pooled``, ``paper``, ``none``) and ``steps`` are the usual knobs;
    ``overrides`` take any other decode option (``seed``, ``batch_size``, ``baseline``,
    ``overwrite``, ``trajectory_every``; the prior's ``precision`` "bf16" and gradient ``checkpoint``
    "vae"/"unet"/"all") or sampler setting (``weight``, ``tau``, ``rounds``, ``patience``, the paper-exactness
    fields ``clamp``, ``clip_x0``, ``beta``, ``loss_resize``, ``best_by`` …, see
    :class:`~probe.diffusion.schedules.GuidanceConfig`); an unknown name is an error.
    With ``out`` the folder gets what ``probe decode`` writes (images, manifest, features, contact sheet);
    a rerun into the same folder resumes it.

    ``shard`` (``"i/N"`` or a :class:`~probe.distributed.Shard`) decodes only that part into
    ``out/shards/`` and needs ``out`` (join the parts with :func:`probe.merge`); its images are not read
    back. Under torchrun the ranks are the shards: each rank takes its own GPU (unless ``device`` or the
    encoder names one), all wait for each other and rank 0 merges. ``on_start(plan)`` is called once the
    encoder and targets are known, ``on_event`` with the sampler's progress, ``on_warning`` with each
    warning line (e.g. a shard's sample the merge cannot find).
    """
    opts = DecodeOptions.build(options, samples=samples, schedule=schedule, steps=steps, **overrides)
    rt = runtime(shard, asked_device(encoder, device))
    try:
        if not rt.shard.single:
            check_shardable(out, "decode", "folders", "FOLDER")
        enc = load_on(encoder, device, rt, *_encoder_store(target, group))
        plan = DecodePlan(enc, as_targets(enc, target, group), None if out is None else Path(out), rt.shard,
                          rt.group)
        if on_start:
            on_start(plan)
        with output_dir(out) as folder:
            if rt.shard.single:
                result = decode_into(folder, enc, plan.targets, prior, opts, on_event, keep=out is not None,
                                     on_warning=on_warning)
            else:
                result = decode_part(rt, folder, enc, plan.targets, prior, opts, on_event, on_warning)
    finally:
        rt.close()
    result.plan = plan
    return result


def _encoder_store(target: Any, group: str | None) -> tuple[Path | None, str | None]:
    """The store (and group) an encoder of None is inferred from: that of :class:`Targets`, else the first
    ``F.h5:ROW`` string's."""
    items = list(target) if isinstance(target, (list, tuple)) else [target]
    for item in items:
        if isinstance(item, Targets) and item.store is not None:
            return Path(item.store), item.group
    return store_of(*items), group


def decode_into(folder: Path, encoder, targets: list[Target], prior: Any, options: DecodeOptions,
                on_event: Callable[[DecodeEvent], None] | None = None, keep: bool = True,
                shard: Shard | None = None, on_warning: Note | None = None) -> DecodeResult:
    """Decode ``targets`` into ``folder`` and read the images back (the step every workflow shares); a
    part of a split run (``shard``) leaves its images on disk for the merge."""
    diffusion = load_prior(prior, encoder.device, options.precision, options.checkpoint)
    summary = decode_targets(diffusion, encoder, targets, folder, options.settings(), on_event=on_event,
                             shard=shard, on_warning=on_warning)
    return decoded(summary, targets, keep, images=shard is None or shard.single)


def decoded(summary: DecodeSummary, targets: list[Target], keep: bool = True, images: bool = True,
            merged: MergeResult | None = None) -> DecodeResult:
    """The result of ``summary``'s records: their distances, and their images read back unless ``images``
    is False."""
    folder = summary.out
    distances = torch.tensor([r.best_distance for r in summary.records], dtype=torch.float32)
    return DecodeResult(images=read_images(folder, summary.records) if images else torch.empty(0),
                        distances=distances, records=summary.records, targets=list(targets), summary=summary,
                        out=folder if keep else None, merged=merged)


def decode_part(rt: Runtime, out: Path, encoder: Encoder, targets: list[Target], prior: Any,
                options: DecodeOptions, on_event: Callable[[DecodeEvent], None] | None = None,
                on_warning: Note | None = None) -> DecodeResult:
    """Decode this process's shard of ``targets`` into its shard folder; under torchrun wait for every rank,
    then on rank 0 merge: its result becomes the merged run's (records, images, total time).

    A failed rank stops the merge on every rank (ProbeError); finished batches are kept for a rerun."""

    def failed() -> ProbeError:
        return ProbeError(f"{out}: another rank failed; every finished batch is kept in {out / 'shards'}, "
                          "rerun the same command to resume")

    part, merges = run_part(rt, lambda: decode_into(out, encoder, targets, prior, options, on_event,
                                                    shard=rt.shard, on_warning=on_warning), failed)
    if not merges:
        return part
    t0 = time.perf_counter()
    joined = MergeResult(out, records=merge_decodes(out, on_warning=on_warning))
    joined.seconds = time.perf_counter() - t0
    s = part.summary
    summary = DecodeSummary(out=out, records=joined.records or [], seconds=s.seconds + joined.seconds,
                            n_targets=len(targets), samples=options.samples, baseline_seconds=s.baseline_seconds,
                            resumed=s.resumed)
    return decoded(summary, targets, merged=joined)
