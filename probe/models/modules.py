"""Any ``torch.nn.Module`` as an encoder: the user's own network plus the preprocessing it expects.

``probe.load_encoder(my_net, preprocess={...})`` lands here. A timm model needs no preprocessing (its
pretrained config gives it); any other module names it as a :class:`~probe.models.encoder.Preprocess`,
a dict of its fields (``size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``in_chans``,
``crop_mode``) or a timm data config (``resolve_data_config(...)``: ``input_size`` = (C, H, W)).
The embedding is the module's output (``embed=`` picks another), and every named submodule is a layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from probe.errors import UsageError
from probe.models.encoder import EncoderParts, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_from(spec: Preprocess | Mapping[str, Any], where: str = "preprocess") -> Preprocess:
    """A Preprocess from itself, a dict of its fields, or a timm data config (``input_size`` (C, H, W))."""
    if isinstance(spec, Preprocess):
        return spec
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where}: give a probe Preprocess or a dict (size, mean, std ...), "
                         f"not {type(spec).__name__}")
    cfg = dict(spec)
    if "input_size" in cfg:  # timm's data config
        c, h, w = cfg.pop("input_size")
        if h != w:
            raise UsageError(f"{where}: probe needs a square input size, not {h}x{w}")
        cfg.setdefault("in_chans", c)
        cfg["size"] = h
    if "size" not in cfg:
        raise UsageError(f"{where}: needs 'size' (the network's input side in pixels)")
    known = {"size", "mean", "std", "crop_pct", "interpolation", "in_chans", "crop_mode"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return _preprocess(cfg)
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    except (TypeError, ValueError, OverflowError) as exc:  # "size": "big", "mean": 3, 1e400
        raise UsageError(f"{where}: not a preprocessing config ({type(exc).__name__}: {str(exc)[:80]})") from None


def _preprocess(cfg: dict) -> Preprocess:
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    return Preprocess(size=int(cfg["size"]), mean=mean, std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
                      crop_pct=float(cfg.get("crop_pct", 1.0)), interpolation=str(cfg.get("interpolation", "bicubic")),
                      in_chans=int(cfg.get("in_chans", len(mean))), crop_mode=str(cfg.get("crop_mode", "center")))


def module_parts(model: nn.Module, preprocess: Preprocess | Mapping[str, Any] | None = None,
                 embed: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 class_names: Sequence[str] | None = None) -> EncoderParts:
    """EncoderParts of a user's module; a timm model brings its own preprocessing, embedding and head."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"load_encoder takes a model spec string or a torch.nn.Module, not {type(model).__name__}")
    if preprocess is None and hasattr(model, "forward_head") and hasattr(model, "pretrained_cfg"):
        from probe.models.timm_models import timm_parts

        parts = timm_parts(model)
        if embed is not None:
            parts.embed = embed
        if head is not None:
            parts.head = head
        if class_names is not None:
            parts.class_names = list(class_names)
        return parts
    if preprocess is None:
        raise UsageError(f"{type(model).__name__}: give preprocess= (size, mean, std ...): probe must know what "
                         "input the network expects")
    return EncoderParts(model=model, preprocess=preprocess_from(preprocess), embed=embed or (lambda m, x: m(x)),
                        head=head, class_names=list(class_names) if class_names is not None else None)
