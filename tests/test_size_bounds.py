"""Sizes checked before allocation (issue 22): a tiny file never makes probe allocate gigabytes.

``probe.bounds`` checks what a file declares (``.npy`` headers, image axes and aspect ratios, JSON
configs) against what it holds or what can be processed; HDF5 declared shapes are in
tests/test_containment.py. Oversize images are skipped with a warning by extract, refused (exit 3)
elsewhere; never exit 1.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from probe.bounds import MAX_ASPECT, check_image_shape, load_npy, read_json_config
from probe.errors import InputError, UsageError
from probe.images import ImageTooLarge, read_image_array


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _npy_claiming(path: Path, shape: tuple[int, ...], body: bytes = b"\0" * 16) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fh.write(body)
    return path


# ------------------------------------------------------------------------------------- .npy headers

@pytest.mark.parametrize("shape", [(2**40,), (400_000_000, 96), (5,)], ids=["2^40", "4e8x96", "5-short"])
def test_npy_header_larger_than_file_refused(tmp_path, shape):
    path = _npy_claiming(tmp_path / "v.npy", shape, body=b"\0" * 8)
    with pytest.raises(InputError, match="declares"):
        load_npy(path)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00\xff\xff{garbage"],
                         ids=["zero-bytes", "magic-only", "bad-header"])
def test_npy_broken_header_is_input_error(tmp_path, content):
    path = tmp_path / "v.npy"
    path.write_bytes(content)
    with pytest.raises(InputError, match="v.npy"):
        load_npy(path)


def test_npy_good_file_loads(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert load_npy(tmp_path / "v.npy").shape == (2, 3)


def test_cli_vector_bomb_exit3(run_cli, tmp_path):
    path = _npy_claiming(tmp_path / "bomb.npy", (2**40,))
    r = run_cli("decode", "--vector", path, "-m", "timm:test_resnet", "--weights", "random", "--device", "cpu",
                "-o", tmp_path / "d")
    assert r.exit_code == 3, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "declares" in errors[0]


# ------------------------------------------------------------------------------------- images

@pytest.mark.parametrize("h,w,limit,fragment", [
    (1, 3_000_000, None, "extreme aspect ratio"),
    (3_000_000, 1, None, "extreme aspect ratio"),
    (10, 10 * MAX_ASPECT + 1, None, "extreme aspect ratio"),
    (0, 10, None, "empty side"),
    (12000, 12000, 90_000_000, "image too large"),
])
def test_image_shape_bounds(h, w, limit, fragment):
    with pytest.raises(ImageTooLarge, match=fragment):
        check_image_shape("x.png", h, w, limit)


def test_planar_tiff_counts_every_axis(tmp_path):
    """A planar float RGB TIFF (PIL cannot read it; tifffile does): 3x100x100 = 30,000 values, not 3x100."""
    import tifffile

    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.zeros((3, 100, 100), np.float32), photometric="rgb", planarconfig="separate")
    with pytest.raises(ImageTooLarge, match="30,000 pixels"):
        read_image_array(path, max_pixels=20_000)
    assert read_image_array(path, max_pixels=40_000).shape == (3, 100, 100)


def _pil_pages(path: Path, sides: list[int]) -> None:
    from PIL import Image

    pages = [Image.fromarray(np.full((s, s, 3), 40 * i, np.uint8)) for i, s in enumerate(sides)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _float_pages(path: Path, sides: list[int]) -> None:
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for s in sides:
            tif.write(np.full((s, s, 3), 0.5, np.float32), photometric="rgb")


# (writer, file name, page sides, --max-pixels, result: the shape read, or the limit's message)
MULTI_PAGE = [
    (_pil_pages, "p.tif", [20, 400], 1_000, (3, 20, 20)),             # a big later page is never read
    (_pil_pages, "p.tif", [40, 10], 1_000, "1,600 pixels"),           # page 0 is the one counted
    (_pil_pages, "a.gif", [20, 400], 1_000, (3, 20, 20)),             # animated GIF: frame 0 likewise
    (_float_pages, "f.tif", [20, 400], 1_500, (3, 20, 20)),           # tifffile (float): page 0, every axis
    (_float_pages, "f.tif", [30, 10], 2_000, "2,700 pixels"),         # 3x30x30 values
]


@pytest.mark.parametrize("write,name,sides,limit,expect", MULTI_PAGE,
                         ids=[f"{c[1]}-{c[2]}" for c in MULTI_PAGE])
def test_multi_page_images_read_and_count_only_page_zero(tmp_path, write, name, sides, limit, expect):
    """Only the first page of a multi-page TIFF (first frame of an animation) is decoded, so only it is
    counted against --max-pixels; later pages, however large they claim to be, are never read."""
    path = tmp_path / name
    write(path, sides)
    if isinstance(expect, tuple):
        assert read_image_array(path, max_pixels=limit).shape == expect
    else:
        with pytest.raises(ImageTooLarge, match=expect):
            read_image_array(path, max_pixels=limit)


def test_extract_skips_extreme_aspect_png(run_cli, tmp_path, small_images, tiny_ckpt):
    strip = tmp_path / "strip.png"
    strip.write_bytes(_png_claiming(3_000_000, 1))
    r = run_cli("extract", small_images[0], strip, "-o", tmp_path / "s.h5", "-m", "timm:test_resnet", "--weights",
                tiny_ckpt, "--device", "cpu", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "strip.png: extreme aspect ratio" in r.stderr
    from probe.store import FeatureStore

    with FeatureStore(tmp_path / "s.h5") as st:
        assert len(st.group()) == 1


def test_decode_image_extreme_aspect_exit3(run_cli, tmp_path):
    strip = tmp_path / "strip.png"
    strip.write_bytes(_png_claiming(1, 3_000_000))
    r = run_cli("decode", "--image", strip, "-m", "timm:test_resnet", "--weights", "random", "--device", "cpu",
                "-o", tmp_path / "d")
    assert r.exit_code == 3, r.output
    assert "extreme aspect ratio" in r.stderr and "Traceback" not in r.output


# ------------------------------------------------------------------------------------- configs

def test_json_config_size_bound(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"size": 224, "pad": "x" * (2 << 20)}))
    with pytest.raises(InputError, match="config file of"):
        read_json_config(big)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError):
        read_json_config(deep)


@pytest.mark.parametrize("cfg,fragment", [
    ({"size": 10**9}, "input size"), ({"size": 0}, "input size"), ({"size": "big"}, "not a preprocessing config"),
    ({"size": 224, "in_chans": 10**6}, "in_chans"), ({"size": 224, "crop_pct": 0}, "crop_pct"),
    ({"size": 224, "mean": [float("nan")] * 3}, "mean/std"), ({"size": 224, "std": [0, 1, 1]}, "mean/std"),
    ({"size": 224, "mean": 3}, "not a preprocessing config"), ({"size": 1e400}, "not a preprocessing config"),
])
def test_preprocess_config_bounds(cfg, fragment):
    from probe.models.modules import preprocess_from

    with pytest.raises(UsageError, match=fragment):
        preprocess_from(cfg)


@pytest.mark.parametrize("sidecar,fragment", [
    ({"size": 10**9}, "input size"), ("x" * (2 << 20), "config file of"), ([1, 2], "not a JSON object"),
], ids=["size-1e9", "2MiB", "list"])
def test_torchscript_sidecar_bounds_exit3(tmp_path, sidecar, fragment):
    import torch

    from probe.models.torchscript_models import load_torchscript

    path = tmp_path / "m.pt"
    torch.jit.script(torch.nn.Flatten()).save(str(path))
    side = path.with_name(path.name + ".json")
    side.write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    with pytest.raises(InputError, match=fragment):
        load_torchscript(str(path))


# ------------------------------------------------------------------------------------- brace patterns

def test_brace_count_without_expanding():
    from probe.sources import brace_count, expand_braces

    assert brace_count("s{000..999}{a,b}.tar") == 2000
    assert brace_count("{0..999}{0..999}{0..999}.png") == 10**9
    assert expand_braces("s{0..2}.tar") == ["s0.tar", "s1.tar", "s2.tar"]
    with pytest.raises(UsageError, match="brace pattern expands to 1,000,000,000 names"):
        expand_braces("{0..999}{0..999}{0..999}.png")
