"""Shared fixtures: small real images, a tiny deterministic timm checkpoint, and a CLI runner.

Everything is made on the fly in pytest's tmp folders from data that installs with the package
registries (scikit-image's bundled photos, Debian's Fashion-MNIST); nothing is downloaded.
Session-scoped fixtures are read-only by convention: a test that adds or corrupts files copies them
first (``copy_images``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

# Real photographs bundled with scikit-image (no download): name -> loader name in skimage.data.
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Full-size scikit-image photos as PNG files (RGB ones and two grey ones: camera, coins)."""
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for name in PHOTO_NAMES:
        path = root / f"{name}.png"
        Image.fromarray(_skimage_photo(name)).save(path)
        out[name] = path
    return out


def write_small_images(root: Path, n: int, size: int = 40, prefix: str = "img") -> list[Path]:
    """``n`` distinct small RGB PNGs (crops of the skimage photos), named ``{prefix}{i:02d}.png``.

    Sizes vary a little (non-square) so the resize/crop path is exercised; contents are all different,
    so content hashes are unique.
    """
    root.mkdir(parents=True, exist_ok=True)
    sources = [_skimage_photo(n_) for n_ in ("chelsea", "coffee", "astronaut", "rocket")]
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = size + (i % 3) * 4, size + ((i + 1) % 3) * 6
        top, left = 7 * i % (src.shape[0] - 2 * h), 11 * i % (src.shape[1] - 2 * w)
        crop = src[top:top + 2 * h:2, left:left + 2 * w:2]
        path = root / f"{prefix}{i:02d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> list[Path]:
    """12 small distinct RGB photos in one folder (sorted order = file order)."""
    return write_small_images(tmp_path_factory.mktemp("small") / "images", 12)


@pytest.fixture()
def copy_images(tmp_path) -> Callable[[list[Path], str], list[Path]]:
    """Copy session images into this test's tmp folder (so the test may add or damage files)."""

    def copy(paths: list[Path], folder: str = "images") -> list[Path]:
        dst = tmp_path / folder
        dst.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy2(p, dst / p.name)) for p in paths]
    return copy


FASHION_CLASSES_USED = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST test images (28x28 grey PNG), 3 per class for 3 classes, in class-named folders."""
    from probe.datasets import FASHION_CLASSES, DatasetMissing, fashion_mnist

    try:
        images, labels = fashion_mnist("test", size=28)
    except DatasetMissing as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("fashion")
    for c in FASHION_CLASSES_USED:
        folder = root / FASHION_CLASSES[c].replace("/", "-")
        folder.mkdir()
        for k, i in enumerate(np.flatnonzero(labels == c)[:3]):
            Image.fromarray(images[i]).save(folder / f"{k}.png")
    return root


TINY_ARCH = "test_resnet"  # timm's own 0.5M-parameter test network, 160 px input


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A fixed (seeded) random state dict of timm's ``test_resnet``: fast, deterministic features.

    Use as ``-m timm:test_resnet --weights PATH``; unlike ``--weights random`` every load is identical.
    """
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(TINY_ARCH, pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / f"{TINY_ARCH}.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def tiny_encoder_args(tiny_ckpt) -> list[str]:
    return ["-m", f"timm:{TINY_ARCH}", "--weights", str(tiny_ckpt), "--device", "cpu"]


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., Result]:
    """``run_cli("extract", ..., input=None)`` -> click Result of ``probe ...`` run in-process.

    ``result.stdout`` and ``result.stderr`` are kept apart (JSON goes to stdout, messages to stderr).
    """
    from probe.cli.main import cli

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return run
