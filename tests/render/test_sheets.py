"""Contact sheets and plots: sizes, pixel-exact NEAREST upscaling, missing cells, PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.render.plots import plot_map, plot_path_distances
from probe.render.sheets import MIN_CELL, SheetStyle, image_grid, save_png, to_pil


def _checker(n: int = 32) -> np.ndarray:
    """A 1-pixel checkerboard: any smoothing when upscaling would create grey pixels."""
    yy, xx = np.mgrid[:n, :n]
    return (((yy + xx) % 2) * 255).astype(np.uint8)


def test_to_pil_accepts_common_layouts() -> None:
    assert to_pil(np.zeros((8, 8))).size == (8, 8)
    assert to_pil(np.ones((3, 8, 6), np.float32)).size == (6, 8)  # CHW float
    assert to_pil(np.ones((8, 6, 1), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert to_pil(np.full((4, 4, 3), 2.0)).getpixel((0, 0)) == (255, 255, 255)  # clipped
    assert to_pil(Image.new("L", (5, 5))).mode == "RGB"
    with pytest.raises(ValueError, match="cannot show"):
        to_pil(np.zeros((2, 3, 4, 5)))


def test_grid_size_without_labels_is_cells_plus_padding() -> None:
    style = SheetStyle(pad=4)
    cells = [[_checker(), _checker(), _checker()], [_checker(), _checker(), _checker()]]
    sheet = image_grid(cells, style=style)
    side = 96  # 32 px upscaled by 3 to reach MIN_CELL
    assert MIN_CELL == 96
    assert sheet.size == (4 + 3 * (side + 4), 4 + 2 * (side + 4))


def test_tiny_images_upscaled_with_nearest() -> None:
    style = SheetStyle(pad=4)
    sheet = np.asarray(image_grid([[_checker()]], style=style))
    cell = sheet[4 : 4 + 96, 4 : 4 + 96, 0]
    assert set(np.unique(cell)) <= {0, 255}  # no interpolated greys
    np.testing.assert_array_equal(cell[::3, ::3], _checker())


def test_grid_with_captions_labels_title_and_missing_cell(tmp_path: Path) -> None:
    cells = [[_checker(), None], [np.full((32, 32, 3), 0.5), _checker()]]
    captions = [["d=12.3", "failed"], ["d=4.0\nrel=0.41", "d=0.9"]]
    plain = image_grid(cells, cell_size=64)
    sheet = image_grid(
        cells,
        captions=captions,
        row_labels=["PC1", "PC2 (12%)"],
        col_labels=["-3σ", "+3σ"],
        title="perturb: a title",
        cell_size=64,
    )
    assert sheet.width > plain.width and sheet.height > plain.height
    # the missing cell is drawn as a grey box, not left blank
    arr = np.asarray(plain)
    pad = SheetStyle().pad
    box = arr[pad : pad + 64, pad + 64 + pad : pad + 2 * 64 + pad]
    assert (box == SheetStyle().empty).all(axis=-1).mean() > 0.9
    out = save_png(sheet, tmp_path / "sub" / "grid.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == sheet.size


def test_grid_is_deterministic_and_downscales_large_images() -> None:
    big = np.random.default_rng(0).random((200, 100, 3))
    a = image_grid([[big]], captions=[["d=1"]], cell_size=50)
    b = image_grid([[big]], captions=[["d=1"]], cell_size=50)
    assert a.tobytes() == b.tobytes()
    assert a.width == SheetStyle().pad + 50 + SheetStyle().pad


def test_grid_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="column labels"):
        image_grid([[_checker(), _checker()]], col_labels=["only one"])
    with pytest.raises(ValueError, match="at least one cell"):
        image_grid([])


def test_plot_path_distances_writes_png(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 6)
    da = np.stack([t * 10, t * 11])
    db = np.stack([(1 - t) * 10, (1 - t) * 9])
    out = plot_path_distances(t, da, db, tmp_path / "dist.png", title="slerp")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 300
    with pytest.raises(ValueError, match="dist_to_b"):
        plot_path_distances(t, da, db[:, :3], tmp_path / "bad.png")


def test_plot_map_with_labels_thumbnails_and_overlays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(60, 2))
    labels = np.repeat([0, 1, -1], 20)
    thumbs = {0: _checker(), 25: np.full((32, 32, 3), 0.3)}
    out = plot_map(
        pts,
        labels,
        ["shirt", "bag"],
        out_png=tmp_path / "map.png",
        thumbnails=thumbs,
        overlay_points=[[0.0, 0.0], [5.0, 5.0]],
        overlay_images=[_checker(), None],
        overlay_labels=["d=3.1", ""],
        title="umap",
    )
    with Image.open(out) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="overlay images"):
        plot_map(pts, None, out_png=tmp_path / "x.png", overlay_points=[[0, 0]], overlay_images=[])
