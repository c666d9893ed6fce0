"""Any ``torch.nn.Module`` as an encoder: the user's own network plus the preprocessing it expects.

``probe.load_encoder(my_net, preprocess={...})`` lands here. A timm model needs no preprocessing (its
pretrained config gives it); any other module names it as a :class:`~probe.models.encoder.Preprocess`,
a dict of its fields (``size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``in_chans``,
``crop_mode``) or a timm data config (``resolve_data_config(...)``: ``input_size`` = (C, H, W)).
The embedding follows one rule whatever ``preprocess`` is given: a timm model's pre-logits
(``forward_head(..., pre_logits=True)``), a torchvision classifier's final-Linear input (as a
``torchvision:`` spec reads it), otherwise the module's output (``embed=`` picks another). Which one it
is goes into the encoder's record as ``embedding``. Every named submodule is a layer.
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
    if _is_timm(model):
        from probe.models.timm_models import timm_parts

        parts = timm_parts(model)
        if preprocess is not None:  # the user's preprocessing; the embedding stays timm's pre-logits
            parts.preprocess = preprocess_from(preprocess)
        rule = EMBED_TIMM
    else:
        if preprocess is None:
            raise UsageError(f"{type(model).__name__}: give preprocess= (size, mean, std ...): probe must know "
                             "what input the network expects")
        parts = _torchvision_classifier_parts(model, preprocess_from(preprocess))
        rule = EMBED_CLASSIFIER_INPUT
        if parts is None:
            parts = EncoderParts(model=model, preprocess=preprocess_from(preprocess), embed=lambda m, x: m(x))
            rule = EMBED_OUTPUT
    if embed is not None:
        parts.embed = embed
        rule = EMBED_USER
    if head is not None:
        parts.head = head
    if class_names is not None:
        parts.class_names = list(class_names)
    parts.info = {**parts.info, "embedding": rule}
    return parts


#: what "embedding" is for a module encoder (recorded as ``embedding`` in its record)
EMBED_TIMM = "pre-logits (timm forward_head pre_logits=True)"
EMBED_CLASSIFIER_INPUT = "classifier input (input of the final Linear layer, torchvision)"
EMBED_OUTPUT = "module output"
EMBED_USER = "embed= function"


def _is_timm(model: nn.Module) -> bool:
    return hasattr(model, "forward_head") and hasattr(model, "pretrained_cfg")


def _torchvision_classifier_parts(model: nn.Module, preprocess: Preprocess) -> EncoderParts | None:
    """A torchvision classifier (its class defined in ``torchvision.models``): embedding = the input of its
    final Linear layer, head = its output, as ``probe.models.torchvision_models`` does for a spec."""
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    from probe.models.torchvision_models import classifier_parts

    return classifier_parts(model, linears[-1], preprocess)
