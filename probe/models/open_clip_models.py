"""open_clip networks: ``open_clip:ARCH/PRETRAINED`` (hub weights) or ``open_clip:ARCH`` with --weights.

The embedding is ``encode_image`` without normalisation, as the paper uses CLIP RN50; text prompts go
through ``encode_text`` into the same space, so a prompt can be a decoding target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from probe.errors import UsageError
from probe.models.encoder import EncoderParts, Preprocess


def load_open_clip(name: str, weights: str | None) -> EncoderParts:
    import open_clip

    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models() and not arch.startswith("hf-hub:"):
        raise UsageError(f"open_clip has no architecture {arch!r}; see open_clip.list_models()")
    if weights is not None and tag:
        raise UsageError(f"give either a pretrained tag ({tag}) or --weights, not both")
    if weights is None and not tag and not arch.startswith("hf-hub:"):
        raise UsageError(f"open_clip:{arch} needs a pretrained tag (open_clip:{arch}/TAG) or --weights PATH|random")
    pretrained = tag or (None if weights == "random" else weights)
    model = open_clip.create_model(arch, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(arch)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    pre = Preprocess(size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=1.0,
                     interpolation=cfg.get("interpolation", "bicubic"), in_chans=3)

    def embed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.encode_image(x)

    def encode_text(prompts: Sequence[str]) -> torch.Tensor:
        device = next(model.parameters()).device
        return model.encode_text(tokenizer(list(prompts)).to(device))

    return EncoderParts(model=model, preprocess=pre, embed=embed, encode_text=encode_text,
                        prefix_tokens=1, info={"family": "open_clip"})
