"""TorchScript checkpoints: ``torchscript:PATH``. The module's output is the embedding.

Preprocessing defaults to 224 px, bicubic, ImageNet mean/std; a JSON file beside the checkpoint
(``PATH.json`` with any of size, mean, std, crop_pct, interpolation, in_chans) overrides it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from probe.errors import InputError, UsageError
from probe.models.encoder import EncoderParts
from probe.models.modules import IMAGENET_MEAN, IMAGENET_STD, preprocess_from


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
        from probe.bounds import read_json_config

        side_cfg = read_json_config(side)  # at most 1 MiB, JSON, else InputError
        if not isinstance(side_cfg, dict):
            raise InputError(f"{side}: not a JSON object of preprocessing fields")
        cfg.update(side_cfg)
    try:
        pre = preprocess_from(cfg, str(side))
    except UsageError as exc:  # the side file is input data: exit code 3
        raise InputError(str(exc)) from None
    return EncoderParts(model=model, preprocess=pre, embed=lambda m, x: m(x), hookable=False)
