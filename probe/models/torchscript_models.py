"""TorchScript checkpoints: ``torchscript:PATH``. The module's output is the embedding.

Preprocessing defaults to 224 px, bicubic, ImageNet mean/std; a JSON file beside the checkpoint
(``PATH.json`` with any of size, mean, std, crop_pct, interpolation, in_chans) overrides it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from probe.errors import InputError
from probe.models.encoder import EncoderParts, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_torchscript(path: str) -> EncoderParts:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: TorchScript file not found")
    try:
        model = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{p}: not a TorchScript module ({type(exc).__name__})") from exc
    cfg = {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875, "interpolation": "bicubic"}
    side = p.with_name(p.name + ".json")
    if side.is_file():
        try:
            cfg.update(json.loads(side.read_text()))
        except json.JSONDecodeError as exc:
            raise InputError(f"{side}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    pre = Preprocess(size=int(cfg["size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     crop_pct=float(cfg["crop_pct"]), interpolation=cfg["interpolation"],
                     in_chans=int(cfg.get("in_chans", len(cfg["mean"]))))
    return EncoderParts(model=model, preprocess=pre, embed=lambda m, x: m(x), hookable=False)
