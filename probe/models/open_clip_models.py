"""open_clip networks: ``open_clip:ARCH/PRETRAINED`` (hub weights) or ``open_clip:ARCH`` with --weights;
``open_clip:hf-hub:ORG/NAME`` for a model hosted on the Hugging Face hub (config and weights from there).

The embedding is ``encode_image`` without normalisation, as the paper uses CLIP RN50; text prompts go
through ``encode_text`` into the same space, so a prompt can be a decoding target.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from probe.errors import UsageError
from probe.models.encoder import EncoderParts, Preprocess


def load_open_clip(name: str, weights: str | None) -> EncoderParts:
    import open_clip

    from probe.models.hub import hub_access

    on_hub = name.startswith("hf-hub:")
    if on_hub:  # the whole name is the model id: the ORG/NAME slash is not a pretrained tag
        arch, tag = name, ""
        if name.count("/") != 1:
            raise UsageError(f"open_clip:{name}: use open_clip:hf-hub:ORG/NAME")
        if weights is not None:
            raise UsageError(f"open_clip:{name} loads its weights from the hub; --weights does not apply")
    else:
        arch, _, tag = name.partition("/")
    if not on_hub and arch not in open_clip.list_models():
        raise UsageError(f"open_clip has no architecture {arch!r}; see open_clip.list_models()")
    if weights is not None and tag:
        raise UsageError(f"give either a pretrained tag ({tag}) or --weights, not both")
    if weights is None and not tag and not on_hub:
        raise UsageError(f"open_clip:{arch} needs a pretrained tag (open_clip:{arch}/TAG) or --weights PATH|random")
    pretrained = tag or (None if weights == "random" else weights)
    with hub_access(f"open_clip:{name}") if (tag or on_hub) else nullcontext():  # local: no network
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
