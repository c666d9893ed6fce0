"""Contact sheets: grids of decoded images with a small caption under each.

The strip of `probe interpolate`, the direction × scale grid of `probe perturb` and the decode
contact sheet are all the same picture -- rows of images, each with the distance it reached -- so
one function draws them.  Only PIL is used, so sheets are byte-identical across runs with the same
inputs (no timestamps or backend state), and 32×32 images are upscaled with NEAREST so they stay
visible and pixel-honest instead of being smoothed into blur.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Cell = Image.Image | np.ndarray | None

# A cell smaller than this (longest side, pixels) is upscaled by an integer factor to reach it.
MIN_CELL = 96


@dataclass(frozen=True)
class SheetStyle:
    """Spacing, colours and font size of a sheet; the defaults suit 32-256 px images."""

    pad: int = 6
    font_size: int = 12
    title_size: int = 15
    background: tuple[int, int, int] = (255, 255, 255)
    text: tuple[int, int, int] = (20, 20, 20)
    muted: tuple[int, int, int] = (110, 110, 110)
    empty: tuple[int, int, int] = (228, 228, 228)


def to_pil(image: Image.Image | np.ndarray | Any) -> Image.Image:
    """An RGB PIL image from a PIL image or an array.

    Arrays may be HxW, HxWxC or CxHxW (C in 1, 3, 4), uint8 in [0, 255] or float in [0, 1]
    (values outside are clipped); torch tensors are accepted through their ``numpy()``.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot show an array of shape {arr.shape} as an image")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(arr)
    return pil.convert("RGB")


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib, a dependency) for σ, →, × and friends in labels;
    Pillow's own default font lacks them and would draw empty boxes."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Each line shortened with an ellipsis so captions never spill into the neighbouring cell."""
    lines = []
    for line in text.split("\n"):
        if _text_size(draw, line, font)[0] > width:
            while line and _text_size(draw, line + "…", font)[0] > width:
                line = line[:-1]
            line += "…"
        lines.append(line)
    return "\n".join(lines)


def _cell_side(images: list[Image.Image]) -> int:
    """Default cell: the largest image side, raised to MIN_CELL by an integer factor if tiny."""
    if not images:
        return MIN_CELL
    side = max(max(im.size) for im in images)
    if side < MIN_CELL:
        side *= math.ceil(MIN_CELL / side)
    return side


def _fit_image(im: Image.Image, side: int) -> Image.Image:
    """Scale to fit a side×side box, keeping the aspect ratio.

    Upscaling uses NEAREST (crisp pixels, nothing invented); downscaling uses LANCZOS.
    """
    w, h = im.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == im.size:
        return im
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return im.resize(size, resample)


def image_grid(
    cells: Sequence[Sequence[Cell]],
    captions: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_size: int | None = None,
    style: SheetStyle | None = None,
    marked: Sequence[Sequence[bool]] | None = None,
) -> Image.Image:
    """A contact sheet: ``cells[r][c]`` drawn in rows with ``captions[r][c]`` under each.

    ``None`` cells (e.g. a decode that failed) are drawn as grey boxes so the grid stays aligned;
    rows may be ragged.  Captions may hold several lines ("d=12.3\\nrel=0.41").  ``cell_size``
    is the side of the square box each image is fitted into; by default the largest image side,
    with images below 96 px upscaled by an integer factor. ``marked[r][c]`` true draws a red frame
    around the cell: a decode that a check flagged (not reached, off the prior's manifold; see
    :func:`flag_caption`).
    """
    st = style or SheetStyle()
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid needs at least one cell")
    if captions is not None and len(captions) != n_rows:
        raise ValueError(f"captions have {len(captions)} rows but cells have {n_rows}")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")

    pil: list[list[Image.Image | None]] = [[None if c is None else to_pil(c) for c in row] for row in cells]
    side = int(cell_size) if cell_size else _cell_side([im for row in pil for im in row if im is not None])
    if side < 1:
        raise ValueError(f"cell_size must be positive, got {cell_size}")

    font, title_font = _font(st.font_size), _font(st.title_size)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = st.pad

    def caption(r: int, c: int) -> str:
        if captions is None or c >= len(captions[r]):
            return ""
        return _fit_text(scratch, str(captions[r][c] or ""), font, side)

    cap_text = [[caption(r, c) for c in range(n_cols)] for r in range(n_rows)]
    cap_h = max((_text_size(scratch, t, font)[1] for row in cap_text for t in row), default=0)
    cap_block = cap_h + pad if cap_h else 0

    row_text = [str(t) for t in row_labels] if row_labels is not None else []
    label_w = min(max((_text_size(scratch, t, font)[0] for t in row_text), default=0), 3 * side)
    label_block = label_w + pad if label_w else 0
    col_text = [_fit_text(scratch, str(t), font, side) for t in col_labels] if col_labels is not None else []
    col_h = max((_text_size(scratch, t, font)[1] for t in col_text), default=0)
    col_block = col_h + pad if col_h else 0

    cell_w, cell_h = side + pad, side + cap_block + pad
    width = pad + label_block + n_cols * cell_w
    title_text = _fit_text(scratch, title, title_font, width - 2 * pad) if title else ""
    title_h = _text_size(scratch, title_text, title_font)[1]
    title_block = title_h + pad if title_h else 0
    height = pad + title_block + col_block + n_rows * cell_h

    sheet = Image.new("RGB", (width, height), st.background)
    draw = ImageDraw.Draw(sheet)
    y0 = pad
    if title_text:
        draw.multiline_text((pad, y0), title_text, fill=st.text, font=title_font, spacing=2)
        y0 += title_block
    x0 = pad + label_block
    for c, t in enumerate(col_text):
        tw = _text_size(draw, t, font)[0]
        draw.multiline_text(
            (x0 + c * cell_w + (side - tw) // 2, y0), t, fill=st.muted, font=font, spacing=2, align="center"
        )
    y0 += col_block
    for r in range(n_rows):
        top = y0 + r * cell_h
        if row_text:
            t = _fit_text(draw, row_text[r], font, label_w)
            th = _text_size(draw, t, font)[1]
            draw.multiline_text((pad, top + (side - th) // 2), t, fill=st.muted, font=font, spacing=2)
        for c in range(n_cols):
            left = x0 + c * cell_w
            im = pil[r][c] if c < len(pil[r]) else None
            if im is None:
                if c < len(pil[r]):  # an explicit None: a missing result, not a ragged row's end
                    draw.rectangle((left, top, left + side - 1, top + side - 1), fill=st.empty)
                    draw.line((left, top, left + side - 1, top + side - 1), fill=st.muted)
                    draw.line((left, top + side - 1, left + side - 1, top), fill=st.muted)
            else:
                fitted = _fit_image(im, side)
                sheet.paste(fitted, (left + (side - fitted.width) // 2, top + (side - fitted.height) // 2))
            if marked is not None and r < len(marked) and c < len(marked[r]) and marked[r][c]:
                w = max(2, side // 32)
                draw.rectangle((left, top, left + side - 1, top + side - 1), outline=FLAG_COLOUR, width=w)
            t = cap_text[r][c]
            if t:
                tw = _text_size(draw, t, font)[0]
                draw.multiline_text(
                    (left + (side - tw) // 2, top + side + pad // 2),
                    t,
                    fill=st.text,
                    font=font,
                    spacing=2,
                    align="center",
                )
    return sheet


FLAG_COLOUR = (220, 30, 30)
FLAG_WORDS = {"not_reached": "NOT REACHED", "off_manifold": "OFF-MANIFOLD", "out_of_domain": "OUT OF DOMAIN"}


def flag_caption(record: Any) -> str:
    """The caption line naming why a decode is no evidence about its feature ("" when no check flagged it):
    its ``flag_reasons`` (probe.manifest.SampleRecord) in words."""
    reasons = getattr(record, "flag_reasons", None) or []
    return " ".join(FLAG_WORDS.get(r, r) for r in reasons)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG, creating parent folders; returns the path written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return out
