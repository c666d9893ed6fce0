"""What every workflow shares: an encoder from whatever the caller has (on this process's device under
torchrun; the one loaders are :func:`probe.models.registry.load_encoder` and
:func:`probe.diffusion.priors.load_prior`), turning targets of any form into :class:`~probe.targets.Target`
lists,
and the output folder (the caller's, or a temporary one when a notebook only wants the tensors back).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from probe.distributed import Runtime
from probe.errors import UsageError
from probe.models.encoder import Encoder
from probe.models.registry import load_encoder
from probe.targets import Target, Targets, encode_images01, parse_endpoint, split_store_ref, unique_ids, vector_target
from probe.workflows.options import EncoderOptions

Note = Callable[[str], None]


def resolve_encoder(encoder: Encoder | EncoderOptions | str | nn.Module | None, store: str | Path | None = None,
                    group: str | None = None, device: str | None = None) -> Encoder:
    """The workflows' encoder argument: an Encoder as is; a spec or module loaded; None or EncoderOptions by
    the one inference rule (:meth:`EncoderOptions.resolved`: the store's encoder, else the default)."""
    if isinstance(encoder, Encoder):
        return encoder
    if encoder is None or isinstance(encoder, EncoderOptions):
        opts = encoder or EncoderOptions(device=device)
        return opts.load(store, group)
    return load_encoder(encoder, device=device)


def asked_device(encoder: Any, device: str | None) -> str | None:
    """The device the caller asked for (it picks torchrun's backend: nccl for GPUs, else gloo)."""
    if isinstance(encoder, EncoderOptions):
        return encoder.device
    return str(encoder.device) if isinstance(encoder, Encoder) else device


def load_on(encoder: Any, device: str | None, rt: Runtime, store: str | Path | None = None,
            group: str | None = None) -> Encoder:
    """The encoder on this process's device: under torchrun each rank's own GPU unless one was named
    (an Encoder stays where it is). ``store``/``group`` infer it as :func:`resolve_encoder` does."""
    if isinstance(encoder, EncoderOptions):
        return resolve_encoder(dataclasses.replace(encoder, device=rt.device(encoder.device)), store, group)
    return resolve_encoder(encoder, store, group, device=rt.device(device))


def store_of(*refs: Any) -> Path | None:
    """The feature store the first ``F.h5:ROW`` reference names (the store an encoder of None is inferred
    from)."""
    for ref in refs:
        found = split_store_ref(ref) if isinstance(ref, str) else None
        if found and found[0].is_file():
            return found[0]
    return None


def as_targets(encoder: Encoder, target: Any, group: str | None = None, name: str = "target") -> list[Target]:
    """Targets from what a caller has: a Target; a feature vector [D] or matrix [N, D] (numpy or torch);
    an image tensor [C, H, W] or batch [N, C, H, W] in [0, 1] (encoded now); a string in the form of
    ``probe interpolate``'s endpoints (``F.h5:ROW``, ``image:PATH`` or a path, ``text:PROMPT``,
    ``vector:PATH``); :class:`~probe.targets.Targets` (``probe decode``'s target options); or a list of
    any of these."""
    out: list[Target] = []
    items = list(target) if isinstance(target, (list, tuple)) else [target]
    if not items:
        raise UsageError(f"{name}: no targets given")
    dim = encoder.feature_dim
    for i, item in enumerate(items):
        if isinstance(item, Target):
            out.append(item)
        elif isinstance(item, Targets):
            out += item.resolve(encoder)
        elif isinstance(item, (str, Path)):
            out.append(parse_endpoint(str(item), encoder, group, name))
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            out += _array_targets(encoder, item, dim, f"{name}[{i}]" if len(items) > 1 else name)
        else:
            raise UsageError(f"{name}: cannot make a target of {type(item).__name__}; give a vector, an image "
                             "tensor, a path, a Target or Targets")
    return unique_ids(out)


def _array_targets(encoder: Encoder, arr: np.ndarray | torch.Tensor, dim: int, name: str) -> list[Target]:
    x = torch.as_tensor(arr).detach().float().cpu()
    if x.dim() in (1, 2):
        rows = x.reshape(1, -1) if x.dim() == 1 else x
        return [vector_target(r.numpy(), f"vec-{j}" if len(rows) > 1 else "vec", f"{name} vector", dim)
                for j, r in enumerate(rows)]
    if x.dim() in (3, 4):
        from probe.images import check_image_tensor

        imgs = check_image_tensor(x[None] if x.dim() == 3 else x, name)  # finite, in [0, 1]
        feats = encode_images01(encoder, imgs).numpy()
        return [Target(id=f"image-{j}" if len(imgs) > 1 else "image", vector=v, kind="image",
                       source=f"{name} image tensor", index=j if len(imgs) > 1 else None)
                for j, v in enumerate(feats)]
    raise UsageError(f"{name}: expected a vector [D], vectors [N, D] or images [N, C, H, W], got {tuple(x.shape)}")


@contextmanager
def output_dir(out: str | Path | None, name: str = "out") -> Iterator[Path]:
    """``out`` as a Path, or ``name`` (a folder or a file) inside a temporary folder removed afterwards (the
    result keeps tensors, not files)."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        yield Path(tmp) / name
