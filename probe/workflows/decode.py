"""The decode workflow: target features -> images whose features match them (``probe.decode``, ``probe decode``).

:func:`run` takes the encoder, the targets in any form (:func:`probe.workflows.common.as_targets`), the
prior and the decode options, runs the pipeline of :mod:`probe.decoding` into ``out`` (or a temporary
folder) and returns a :class:`DecodeResult` holding the images as one tensor with their distances and
manifest records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probe.decoding import DecodeEvent, DecodeSummary, decode_targets
from probe.distributed import Shard
from probe.manifest import SampleRecord
from probe.targets import Target
from probe.workflows.common import as_targets, load_prior, output_dir, resolve_encoder
from probe.workflows.options import DecodeOptions


@dataclass
class DecodeResult:
    """Decoded samples in manifest order (target by target, samples within a target)."""

    images: torch.Tensor  # [N, C, H, W] in [0, 1]: the best image of each sample, as saved (8-bit)
    distances: torch.Tensor  # [N] squared feature distance each image reached
    records: list[SampleRecord]
    targets: list[Target]
    summary: DecodeSummary
    out: Path | None  # the output folder, None when it was temporary

    def __len__(self) -> int:
        return len(self.records)

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
        on_event: Callable[[DecodeEvent], None] | None = None, shard: Shard | None = None,
        on_warning: Callable[[str], None] | None = None, **overrides: Any) -> DecodeResult:
    """Decode ``target`` with ``encoder`` and the diffusion ``prior`` (default ``bundled:fashion-ddpm``).

    ``samples``, ``schedule`` (``fast``, ``balanced``, ``paper``, ``none``) and ``steps`` are the usual
    knobs; ``overrides`` take any other decode option (``seed``, ``batch_size``, ``baseline``,
    ``overwrite``, ``trajectory_every``; the prior's ``precision`` "bf16" and gradient ``checkpoint``
    "vae"/"unet"/"all") or sampler setting (``weight``, ``tau``, ``rounds``, ``patience``, the paper-exactness
    fields ``clamp``, ``clip_x0``, ``beta``, ``loss_resize``, ``best_by`` …, see
    :class:`~probe.diffusion.schedules.GuidanceConfig`); an unknown name is an error.
    With ``out`` the folder gets what ``probe decode`` writes (images, manifest, features, contact sheet);
    a rerun into the same folder resumes it. ``shard`` (``probe.distributed.Shard``) decodes only that
    part into ``out/shards/`` (join with ``probe.merging.merge_decodes``); its images are not read back.
    """
    opts = DecodeOptions.build(options, samples=samples, schedule=schedule, steps=steps, **overrides)
    enc = resolve_encoder(encoder, device=device)
    targets = as_targets(enc, target, group)
    with output_dir(out) as folder:
        return decode_into(folder, enc, targets, prior, opts, on_event, keep=out is not None, shard=shard,
                           on_warning=on_warning)


def decode_into(folder: Path, encoder, targets: list[Target], prior: Any, options: DecodeOptions,
                on_event: Callable[[DecodeEvent], None] | None = None, keep: bool = True,
                shard: Shard | None = None, on_warning: Callable[[str], None] | None = None) -> DecodeResult:
    """Decode ``targets`` into ``folder`` and read the images back (the step every workflow shares)."""
    diffusion = load_prior(prior, encoder.device, options.precision, options.checkpoint)
    summary = decode_targets(diffusion, encoder, targets, folder, options.settings(), on_event=on_event,
                             shard=shard, on_warning=on_warning)
    distances = torch.tensor([r.best_distance for r in summary.records], dtype=torch.float32)
    images = read_images(folder, summary.records) if shard is None or shard.single else torch.empty(0)
    return DecodeResult(images=images, distances=distances, records=summary.records,
                        targets=list(targets), summary=summary, out=folder if keep else None)
