"""probe's one image reader: every pixel format read as a viewer shows it, or refused with one line.

Each case compares against the same picture stored as a plain 8-bit RGB/grey PNG, so "read right"
means "the same pixels (to 8-bit rounding) a viewer would show".
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.errors import InputError
from probe.images import (
    ImageTooLarge,
    collect_inputs,
    fs_path,
    path_text,
    read_image_array,
)


@pytest.fixture()
def grey8() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    return ((x * 4 + y * 2) % 256).astype(np.uint8)


@pytest.fixture()
def rgb8(grey8) -> np.ndarray:
    return np.stack([grey8, grey8[::-1], 255 - grey8], -1)


def test_16bit_png_uses_full_range(tmp_path, grey8):
    path = tmp_path / "g16.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(path)  # 257 * v: exact 16-bit version of v
    assert Image.open(path).mode.startswith("I")
    arr = read_image_array(path)
    assert arr.shape == (1, 48, 64)
    np.testing.assert_allclose(arr[0], grey8 / 255.0, atol=1e-6)


def test_float_tiff_unit_range(tmp_path, grey8):
    path = tmp_path / "f.tif"
    Image.fromarray((grey8 / 255.0).astype(np.float32), mode="F").save(path)
    np.testing.assert_allclose(read_image_array(path)[0], grey8 / 255.0, atol=1e-6)


def test_float_rgb_tiff_through_tifffile(tmp_path, rgb8):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "rgbf.tif"
    tifffile.imwrite(path, (rgb8 / 255.0).astype(np.float32), photometric="rgb")
    arr = read_image_array(path)
    assert arr.shape == (3, 48, 64)
    np.testing.assert_allclose(arr.transpose(1, 2, 0), rgb8 / 255.0, atol=1e-6)


def test_16bit_rgb_tiff(tmp_path, rgb8):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, rgb8.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_allclose(read_image_array(path).transpose(1, 2, 0), rgb8 / 255.0, atol=1 / 255)


def test_float_tiff_with_nan_refused(tmp_path, grey8):
    path = tmp_path / "nan.tif"
    a = (grey8 / 255.0).astype(np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a, mode="F").save(path)
    with pytest.raises(InputError, match=r"nan.tif: image has NaN"):
        read_image_array(path)


def test_cmyk_reads_as_rgb(tmp_path, rgb8):
    path = tmp_path / "cmyk.tif"
    Image.fromarray(rgb8).convert("CMYK").save(path)
    np.testing.assert_allclose(read_image_array(path).transpose(1, 2, 0), rgb8 / 255.0, atol=1 / 255)


def test_palette_and_palette_transparency(tmp_path, rgb8):
    im = Image.fromarray(rgb8).quantize(16)
    path = tmp_path / "p.png"
    im.save(path)
    np.testing.assert_allclose(read_image_array(path).transpose(1, 2, 0),
                               np.asarray(im.convert("RGB")) / 255.0, atol=1e-6)
    im.info["transparency"] = 0
    tpath = tmp_path / "pt.png"
    im.save(tpath, transparency=0)
    arr = read_image_array(tpath).transpose(1, 2, 0)
    hole = np.asarray(im) == 0
    assert hole.any() and np.allclose(arr[hole], 1.0)  # transparent pixels over white


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[0, 0] = 255  # marker in the stored top-left corner
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.png"
    im.save(path, exif=exif.tobytes())
    arr = read_image_array(path)
    assert arr.shape == (3, 20, 10)  # shown portrait, as a viewer does
    assert arr[:, 0, -1].min() == 1.0  # stored top-left is shown top-right


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_oversized_image_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))  # 10^10 pixels: 30 GB if decoded
    with pytest.raises(ImageTooLarge, match=r"bomb.png: image too large \(10,000,000,000 pixels"):
        read_image_array(path)
    with pytest.raises(ImageTooLarge, match="limit 100"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "s.png")
        read_image_array(tmp_path / "s.png", max_pixels=100)
    assert read_image_array(tmp_path / "s.png", max_pixels=400).shape == (1, 20, 20)


def test_non_utf8_file_name_round_trips(tmp_path, grey8):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    Image.fromarray(grey8).save(raw.decode("utf-8", "surrogateescape"))
    found = collect_inputs([str(tmp_path)])
    assert len(found) == 1
    text = path_text(found[0])
    assert text.endswith("caf\\xe9.png") and text.encode("utf-8")  # storable everywhere
    assert fs_path(text).is_file() and os.fsencode(fs_path(text)) == raw
    np.testing.assert_allclose(read_image_array(fs_path(text))[0], grey8 / 255.0)


def test_binary_list_file_refused(tmp_path, grey8):
    path = tmp_path / "list.png"
    Image.fromarray(grey8).save(path)
    with pytest.raises(InputError, match=r"list.png: not a text list of paths"):
        collect_inputs([], str(path))


def test_directory_as_image_refused(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_image_array(Path(tmp_path))


# ------------------------------------------------------------------ the same reader inside `probe extract`


def test_extract_skips_bomb_and_stores_non_utf8_names(run_cli, tmp_path, small_images, tiny_encoder_args):
    import shutil

    from probe.store import FeatureStore

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(small_images[0], folder / "a.png")
    raw_name = os.fsencode(folder) + b"/b\xff.png"
    shutil.copy(small_images[1], raw_name.decode("utf-8", "surrogateescape"))
    (folder / "bomb.png").write_bytes(_png_claiming(60_000, 60_000))
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(folder / "big.png")  # inputs are < 2,450
    store = tmp_path / "f.h5"
    r = run_cli("extract", folder, "-o", store, *tiny_encoder_args, "--workers", "0", "--max-pixels", "2450",
                "--batch-size", "2")
    assert r.exit_code == 0, r.output
    assert "bomb.png: image too large (3,600,000,000 pixels > limit 2,450" in r.stderr
    assert "big.png: image too large (2,500 pixels" in r.stderr
    with FeatureStore(store) as st:
        paths = st.group().paths
    assert sorted(Path(p).name for p in paths) == ["a.png", "b\\xff.png"]
    assert all(fs_path(p).is_file() for p in paths)


def test_16bit_png_extracts_like_8bit(run_cli, tmp_path, small_images, tiny_encoder_args):
    from probe.store import FeatureStore

    grey = np.asarray(Image.open(small_images[2]).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    store = tmp_path / "f.h5"
    r = run_cli("extract", tmp_path / "g8.png", tmp_path / "g16.png", "-o", store, *tiny_encoder_args,
                "--workers", "0")
    assert r.exit_code == 0, r.output
    with FeatureStore(store) as st:
        f = st.group().rows(slice(None))
    np.testing.assert_allclose(f[0], f[1], atol=1e-4)
