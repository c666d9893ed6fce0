"""Finding input images and reading them into [0, 1] tensors.

PIL only decodes the file; everything after (resize, crop, channel adaptation) is the encoder's torch
preprocessing, the same code the decoder differentiates through.
"""

from __future__ import annotations

import glob
import hashlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from probe.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _expand(item: str) -> Iterator[Path]:
    p = Path(item)
    if p.is_dir():
        yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        yield p
    elif any(ch in item for ch in "*?["):
        matches = sorted(glob.glob(item, recursive=True))
        yield from (Path(m) for m in matches if Path(m).is_file())
    else:
        raise InputError(f"{item}: no such file, directory or glob match")


def collect_inputs(items: Iterable[str], list_file: str | None = None) -> list[Path]:
    """Files, directories (recursive, image suffixes only), globs, and a list file (``-`` = stdin).

    Order is kept and repeats removed, so row order in the store follows the command line.
    """
    entries = list(items)
    if list_file is not None:
        if list_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                lines = Path(list_file).read_text().splitlines()
            except OSError as exc:
                raise InputError(f"{list_file}: cannot read list file ({exc.strerror})") from exc
        entries += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    seen: set[Path] = set()
    out: list[Path] = []
    for item in entries:
        for p in _expand(item):
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def read_image01(path: str | Path) -> torch.Tensor:
    """Decode an image file to a float tensor [C, H, W] in [0, 1] (C = 1 for grey, else 3).

    Raises InputError naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "I;16", "I", "F", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.uint8)[None]
            else:
                if im.mode in ("RGBA", "LA", "P"):
                    im = im.convert("RGBA")
                    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, im)
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from exc
    return torch.from_numpy(np.array(arr, copy=True)).float().div_(255.0)


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> HxW or HxWx3 uint8, rounding as the decoder's quantiser does."""
    arr = (x01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def save_png(x01: torch.Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(x01)).save(path)
