"""Sizes checked before allocation (issue 22): a tiny file must never make probe allocate gigabytes.

Every reader of a size that a file declares asks here first: ``.npy`` headers (:func:`load_npy`), image
dimensions and aspect ratios (:func:`check_image_shape`, used by ``probe.images``), JSON configs
(:func:`read_json_config`). HDF5 datasets are bounded in :mod:`probe.containment` (``check_dataset``).
An oversize input is an InputError (exit 3) naming the file; extraction skips such an image with a
warning like any unreadable one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from probe.errors import InputError

#: an image whose long side is more than this many times its short side is refused (a 1x3,000,000 strip
#: would be resized to 224 x 672,000,000): real photos, scans and panoramas stay far below
MAX_ASPECT = 200
#: configs (preprocessing sidecars, prior configs) are small JSON files
MAX_CONFIG_BYTES = 1 << 20


def load_npy(path: str | Path) -> np.ndarray:
    """``np.load`` of a plain (non-pickle) ``.npy`` file whose header is checked against the bytes the file
    really holds first, so a 100-byte file declaring 2^40 values costs nothing."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read_header(fh, max_header_size=1 << 16)
            start = fh.tell()
            fh.seek(0, 2)
            held = fh.tell() - start
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects (a pickle); probe reads numbers only")
    declared = math.prod(int(s) for s in shape) * dtype.itemsize
    if declared > held:
        raise InputError(f"{path}: declares {'x'.join(map(str, shape)) or 'a scalar'} {dtype} values "
                         f"({declared:,} bytes) but holds {held:,}; damaged or hostile")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({str(exc)[:120]})") from None


class ImageTooLarge(InputError):
    """An image over the pixel limit: skipped (with a warning) by extraction, refused elsewhere."""


def check_image_shape(name: str, height: int, width: int, max_pixels: int | None, values: int | None = None) -> None:
    """Refuse (``ImageTooLarge``, skipped by extraction) an image with an empty side, an extreme
    aspect ratio, or more than ``max_pixels`` pixels; ``values`` counts every axis where the file has more
    than height x width (the planes of a planar TIFF, its samples) and is what the limit then applies to."""
    height, width = int(height), int(width)
    total = int(values) if values is not None else height * width
    if max_pixels and total > max_pixels:
        raise ImageTooLarge(f"{name}: image too large ({total:,} pixels > limit {max_pixels:,}; raise it with "
                            "--max-pixels)")
    short, long = sorted((height, width))
    if short <= 0:
        raise ImageTooLarge(f"{name}: image has an empty side ({width}x{height})")
    if long > MAX_ASPECT * short:
        raise ImageTooLarge(f"{name}: extreme aspect ratio ({width:,}x{height:,}, more than {MAX_ASPECT}:1); "
                            "not an image probe can resize")


def read_json_config(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES) -> object:
    """A small JSON config file, refused (InputError) when larger than ``max_bytes`` or not JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path}: config file of {size:,} bytes (more than {max_bytes:,}); refused")
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply; refused") from None
