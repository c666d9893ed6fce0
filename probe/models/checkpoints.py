"""Loading a user's checkpoint file onto an architecture, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from probe.errors import InputError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (bare, or under 'state_dict'/'model')."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        # torch's refusal of a pickle explains itself over 15 lines: its first line says enough
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:200]
        raise InputError(f"{path}: cannot read weights ({type(exc).__name__}: {first})") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_into(model: nn.Module, path: str | Path) -> None:
    state = read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit the architecture ({first})") from exc
