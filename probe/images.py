"""Finding input images and reading them into [0, 1] tensors.

PIL only decodes the file; everything after (resize, crop, channel adaptation) is the encoder's torch
preprocessing, the same code the decoder differentiates through.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from probe.bounds import ImageTooLarge as ImageTooLarge  # re-exported: what the readers raise
from probe.bounds import check_image_shape
from probe.containment import inside
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


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by suffix, sorted; hidden files such as ``._x.png`` skipped): the one
    walker every command uses, so a file that ``extract`` reads is one that ``compare`` finds."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _expand(item: str) -> Iterator[Path]:
    p = Path(item)
    if p.is_dir():
        yield from list_images(p, recursive=True)
    elif p.is_file():
        yield p
    elif any(ch in item for ch in "*?["):
        matches = sorted(glob.glob(item, recursive=True))
        yield from (Path(m) for m in matches if Path(m).is_file())
    else:
        raise InputError(f"{path_text(item)}: no such file, directory or glob match")


def read_list_file(list_file: str) -> list[str]:
    """Entries of a list file (``-`` = stdin): one path per line, ``#`` comments and blank lines skipped.

    Read as bytes and decoded like file names (``os.fsdecode``), so any name a folder can hold can be
    listed; a binary file (NUL bytes) is refused instead of yielding thousands of garbage "paths".
    """
    if list_file == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        try:
            data = Path(list_file).read_bytes()
        except IsADirectoryError as exc:
            raise InputError(f"{list_file}: is a directory, not a list file") from exc
        except OSError as exc:
            raise InputError(f"{list_file}: cannot read list file ({exc.strerror})") from exc
    if b"\0" in data:
        raise InputError(f"{list_file}: not a text list of paths (binary content)")
    lines = [os.fsdecode(ln.strip()) for ln in data.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def collect_inputs(items: Iterable[str], list_file: str | None = None) -> list[Path]:
    """Files, directories (recursive, image suffixes only), globs, and a list file (``-`` = stdin).

    Order is kept and repeats removed, so row order in the store follows the command line.
    """
    entries = list(items)
    if list_file is not None:
        entries += read_list_file(list_file)
    seen: set[Path] = set()
    out: list[Path] = []
    for item in entries:
        for p in _expand(item):
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


DEFAULT_MAX_PIXELS = 90_000_000  # about PIL's own bomb threshold; a 90 MP RGB image is ~1 GB as float32


def path_text(path: str | Path) -> str:
    """A file name as storable, printable text (UTF-8 always works, whatever bytes the name has).

    File names on POSIX are bytes; Python gives undecodable bytes to ``str`` as lone surrogates, which
    h5py, JSON and most terminals refuse. Those bytes are written as ``\\xNN`` escapes instead
    (``fs_path`` turns them back into the real file name), so a row is never stored with an empty path.
    Line breaks are escaped the same way (``\\x0a``), so a name is always one line.
    """
    if hasattr(path, "read"):  # an in-memory image (a tar member, a parquet cell): its ``name`` attribute
        return str(getattr(path, "name", "<image bytes>"))
    text = os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\x0a").replace("\r", "\\x0d")  # one name, one line (.paths.txt, messages)


_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def fs_path(text: str | Path) -> Path:
    """The file a ``path_text`` names: the text itself when such a file exists, else with ``\\xNN``
    escapes turned back into raw bytes (the file name was not UTF-8)."""
    p = Path(text)
    if p.exists() or "\\x" not in str(text):
        return p
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), os.fsencode(str(text)))
    return Path(os.fsdecode(raw))


def _grey_scale(arr: np.ndarray, mode: str, path: object) -> np.ndarray:
    """One-channel integer or float pixels -> float32 in [0, 1], as an image viewer scales them.

    16-bit modes use their full range (65535 = white), never a clipping 8-bit conversion. Float images
    in [0, 1] are taken as they are, in [0, 255] divided by 255, anything else stretched min-max.
    """
    if mode.startswith("I;16"):
        return arr.astype(np.float32) / 65535.0
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{path}: image has NaN or infinite pixel values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        return a.astype(np.float32)
    if lo >= 0.0 and hi <= 255.0:
        return (a / 255.0).astype(np.float32)
    if mode == "I" and lo >= 0.0 and hi <= 65535.0:
        return (a / 65535.0).astype(np.float32)
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)


def _to_srgb(im: Image.Image) -> Image.Image:
    """CMYK (and other colour spaces) to RGB, through the embedded ICC profile when there is one."""
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("CMYK", "RGB", "LAB"):
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile: fall back to PIL's plain conversion
            pass
    return im.convert("RGB")


def _over_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)


def _decode(im: Image.Image, path: object) -> np.ndarray:
    """A PIL image (first frame) -> float32 [C, H, W] in [0, 1], C = 1 (grey) or 3."""
    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.float32)[None] / 255.0
    if mode.startswith("I") or mode == "F":
        return _grey_scale(np.asarray(im), mode, path)[None]
    if mode in ("LA", "La"):
        return np.asarray(_over_white(im).convert("L"), dtype=np.float32)[None] / 255.0
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        rgb = _over_white(im).convert("RGB")
    elif mode in ("RGB", "CMYK", "LAB"):
        rgb = _to_srgb(im)
    else:  # P without transparency, YCbCr, HSV, RGBX ...
        rgb = im.convert("RGB")
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _read_tiff_fallback(path: str | Path, max_pixels: int | None) -> np.ndarray:
    """TIFFs that PIL cannot open (float or 16-bit RGB): through tifffile, scaled like a viewer."""
    try:
        import tifffile
    except ImportError as exc:
        raise InputError(f"{path_text(path)}: TIFF kind PIL cannot read; install tifffile to read it") from exc
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            # every axis counts: a planar 3x12000x12000 page is 432M values, not 36000 "pixels"
            check_image_shape(path_text(path), page.imagelength, page.imagewidth, max_pixels,
                              values=int(np.prod(page.shape)))
            arr = page.asarray()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise InputError(f"{path_text(path)}: unreadable image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 3, 4):  # planar: channels first
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"{path_text(path)}: unsupported TIFF layout {tuple(arr.shape)}")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.integer):
        full = float(np.iinfo(arr.dtype).max)
        out = arr.astype(np.float32) / full
    else:
        out = _grey_scale(arr, "F", path_text(path))
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def read_image_array(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to float32 [C, H, W] in [0, 1] (C = 1 for grey, else 3), as a viewer shows it.

    The one image reader of probe: EXIF orientation applied; 16-bit and float pixels scaled from their
    full range (not clipped to 8 bits); palette and alpha composited over white; CMYK through its ICC
    profile. Images over ``max_pixels`` (None/0 = no limit) raise ImageTooLarge before any pixel is
    decoded, so a decompression bomb costs nothing. Raises InputError naming the file otherwise.
    """
    name = path_text(path)
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # our own limit below replaces PIL's, so it can be raised
            with Image.open(path) as im:
                check_image_shape(name, im.size[1], im.size[0], max_pixels)  # before any pixel is decoded
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                arr = _decode(im, name)
    except FileNotFoundError as exc:
        raise InputError(f"{name}: file not found") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{name}: is a directory, not an image file") from exc
    except UnidentifiedImageError as exc:
        if Path(name).suffix.lower() in (".tif", ".tiff") and not hasattr(path, "read"):
            return _read_tiff_fallback(path, max_pixels)
        raise InputError(f"{name}: not an image file") from exc
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as exc:
        raise InputError(f"{name}: unreadable image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image01(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``read_image_array`` as a torch tensor [C, H, W] in [0, 1]."""
    return torch.from_numpy(read_image_array(path, max_pixels))


def check_image_tensor(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """The one rule for image tensors given to the API (extract, decode targets): [C, H, W] or
    [N, C, H, W] of finite values in [0, 1] -- NaN or 0-255 pixels are a UsageError, never encoded."""
    from probe.errors import UsageError

    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() not in (3, 4):
        raise UsageError(f"{name}: expected images [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UsageError(f"{name}: image tensors must be float in [0, 1], not {x.dtype} (divide 0-255 by 255)")
    if x.numel() and not torch.isfinite(x).all():
        raise UsageError(f"{name}: image tensor holds NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise UsageError(f"{name}: image tensors must hold values in [0, 1] (0-255 pixels: divide by 255)")
    return x


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> HxW or HxWx3 uint8, rounding as the decoder's quantiser does."""
    arr = (x01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def save_png(x01: torch.Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(x01)).save(path)


def images_inside(root: str | Path, folder: str | Path) -> list[Path]:
    """The images of ``folder`` (a run's ``baseline/``), refused when the folder or one of its files is a
    link that leads out of ``root``."""
    root, folder = Path(root), Path(folder)
    inside(root, folder.relative_to(root) if folder.is_relative_to(root) else folder, "folder")
    images = list_images(folder)
    for p in images:
        inside(root, p.relative_to(root) if p.is_relative_to(root) else p, "image")
    return images
