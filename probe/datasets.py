"""Real image sets that install from package registries, for training, tests and benchmarks.

Nothing here downloads from a hub: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
package and the colour emoji from npm's ``emoji-datasource-google``. Each loader names the install
command in its error when the data is missing, so a fresh machine knows how to get it.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np

from probe.cache import CACHE_DIR

FASHION_DIR = Path(os.environ.get("PROBE_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"


def fashion_slug(c: int) -> str:
    """Folder-safe name of Fashion-MNIST class ``c`` ("T-shirt/top" -> "t-shirt-top"), as examples/fashion uses."""
    return FASHION_CLASSES[c].replace("/", "-").replace(" ", "-").lower()


class DatasetMissing(RuntimeError):
    """A registry-shipped data set is not installed; the message says how to install it."""


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(split: str = "train", size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``uint8`` images ``[N, size, size]`` and ``int64`` labels.

    The 28×28 originals are zero-padded (their background is black) to 32×32, the bundled
    models' resolution, so no resampling blurs the data.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists():
        raise DatasetMissing(
            f"{img_path}: Fashion-MNIST not found; install it with 'apt-get install dataset-fashion-mnist'"
        )
    images = _read_idx(img_path, 16).reshape(-1, 28, 28)
    labels = _read_idx(lab_path, 8).astype(np.int64)
    if size != 28:
        pad = (size - 28) // 2
        if pad < 0 or size - 28 - pad < 0:
            raise ValueError(f"fashion_mnist size must be >= 28, got {size}")
        images = np.pad(images, ((0, 0), (pad, size - 28 - pad), (pad, size - 28 - pad)))
    return np.ascontiguousarray(images), labels


def emoji_dir(fetch: bool = True) -> Path:
    """Folder of the 64×64 Noto colour emoji PNGs, unpacked from the npm tarball into the cache."""
    target = CACHE_DIR / "data" / "emoji-datasource-google"
    img_dir = target / "package" / "img" / "google" / "64"
    if img_dir.is_dir():
        return img_dir
    if not fetch:
        raise DatasetMissing(f"{img_dir}: emoji images not found; run 'npm pack {EMOJI_PACKAGE}'")
    target.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["npm", "pack", EMOJI_PACKAGE], cwd=target, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DatasetMissing(f"{target}: could not fetch {EMOJI_PACKAGE} with npm ({exc})") from exc
    with tarfile.open(target / out) as tar:
        tar.extractall(target, filter="data")
    (target / out).unlink()
    return img_dir


def emoji(split: str = "train", size: int = 32) -> np.ndarray:
    """Colour emoji as ``uint8`` ``[N, size, size, 3]``, alpha composited on white.

    Split is deterministic: every 10th file in sorted order is held out as ``test`` (378 images).
    """
    from PIL import Image

    files = sorted(emoji_dir().glob("*.png"))
    files = [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        rgba = Image.open(f).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        out[i] = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC))
    return out
