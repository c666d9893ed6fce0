"""Matplotlib figures: distances along an interpolation path, and 2-D maps of feature sets.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas directly,
never through pyplot: no global figure state, no GUI backend picked up from the environment
(headless servers, CI), and safe to call from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from probe.render.sheets import to_pil

ImageLike = Any  # PIL.Image.Image | np.ndarray


def _save(fig: Figure, out_png: str | Path, dpi: int) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=dpi, metadata={"Software": None})
    return out


def _curves(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n:
        raise ValueError(f"{name} must be [{n}] or [samples, {n}], got {np.shape(values)}")
    return arr


def plot_path_distances(
    t: Any,
    dist_to_a: Any,
    dist_to_b: Any,
    out_png: str | Path,
    *,
    title: str | None = None,
    endpoint_names: tuple[str, str] = ("A", "B"),
    dpi: int = 120,
) -> Path:
    """Distance of each decoded image to A's and to B's features along the path position t.

    ``dist_to_a``/``dist_to_b`` are [steps] or [samples, steps]; with several samples each is a
    faint line and the mean a bold one, so the crossover point and its spread both show.
    """
    tt = np.asarray(t, dtype=np.float64).reshape(-1)
    da = _curves(dist_to_a, tt.size, "dist_to_a")
    db = _curves(dist_to_b, tt.size, "dist_to_b")
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for curves, colour, name in ((da, "tab:blue", endpoint_names[0]), (db, "tab:orange", endpoint_names[1])):
        if curves.shape[0] > 1:
            for row in curves:
                ax.plot(tt, row, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(
            tt,
            np.nanmean(curves, axis=0),
            color=colour,
            marker="o",
            markersize=3.5,
            linewidth=1.8,
            label=f"distance to {name}",
        )
    ax.set_xlabel("path position t (0 = A, 1 = B)")
    ax.set_ylabel("feature distance of decoded image")
    ax.set_xlim(float(tt.min()), float(tt.max()))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, dpi)


def _image_box(image: ImageLike, px: float, dpi: int) -> OffsetImage:
    """An image artist about ``px`` points wide; tiny images are enlarged without smoothing."""
    pil = to_pil(image)
    zoom = px / max(pil.size)  # OffsetImage scales by dpi/72 itself, so this is px points
    box = OffsetImage(
        np.asarray(pil), zoom=zoom, interpolation="nearest" if max(pil.size) < px else "antialiased"
    )
    return box


def plot_map(
    points2d: Any,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    *,
    out_png: str | Path,
    thumbnails: Sequence[ImageLike | None] | Mapping[int, ImageLike] | None = None,
    overlay_points: Any = None,
    overlay_images: Sequence[ImageLike | None] | None = None,
    overlay_labels: Sequence[str] | None = None,
    title: str | None = None,
    thumb_px: float = 28.0,
    overlay_px: float = 48.0,
    dpi: int = 120,
) -> Path:
    """Scatter of a 2-D map coloured by label, with optional thumbnails and decoded images on it.

    ``labels`` are ints (-1 = unknown, drawn grey) or None; ``class_names[k]`` names label k in
    the legend.  ``thumbnails`` are source images of some points (a list aligned with the points,
    None to skip, or {index: image}).  ``overlay_points`` [M, 2] with ``overlay_images`` places
    decoded images where their features land (or the grid cells of `map --grid`); without images
    the overlay points are drawn as black crosses.
    """
    pts = np.asarray(points2d, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points2d must be [N, 2], got {pts.shape}")
    n = pts.shape[0]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    marker_size = float(np.clip(3000.0 / max(n, 1), 1.0, 25.0))

    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=marker_size, c="tab:blue", alpha=0.6, linewidths=0)
    else:
        y = np.asarray(labels).astype(np.int64).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{y.shape[0]} labels for {n} points")
        classes = sorted(int(c) for c in np.unique(y) if c >= 0)
        palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        unknown = y < 0
        if np.any(unknown):
            ax.scatter(
                pts[unknown, 0],
                pts[unknown, 1],
                s=marker_size,
                c="lightgrey",
                alpha=0.6,
                linewidths=0,
                label="unknown",
            )
        for i, c in enumerate(classes):
            sel = y == c
            name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            ax.scatter(
                pts[sel, 0],
                pts[sel, 1],
                s=marker_size,
                color=palette(i % palette.N),
                alpha=0.7,
                linewidths=0,
                label=name,
            )
        if classes:
            ax.legend(
                loc="center left",
                bbox_to_anchor=(1.01, 0.5),
                fontsize=8,
                markerscale=max(1.0, 4.0 / np.sqrt(marker_size)),
                frameon=False,
            )

    if thumbnails is not None:
        items = thumbnails.items() if isinstance(thumbnails, Mapping) else enumerate(thumbnails)
        for i, im in items:
            if im is None:
                continue
            if not 0 <= int(i) < n:
                raise ValueError(f"thumbnail index {i} outside the {n} points")
            ab = AnnotationBbox(_image_box(im, thumb_px, dpi), tuple(pts[int(i)]), frameon=False, pad=0.0)
            ax.add_artist(ab)

    if overlay_points is not None:
        ov = np.asarray(overlay_points, dtype=np.float64).reshape(-1, 2)
        if overlay_images is None:
            ax.scatter(ov[:, 0], ov[:, 1], marker="x", c="black", s=30, linewidths=1.2, label="decoded")
        else:
            if len(overlay_images) != ov.shape[0]:
                raise ValueError(f"{len(overlay_images)} overlay images for {ov.shape[0]} overlay points")
            for k, (p, im) in enumerate(zip(ov, overlay_images, strict=True)):
                if im is None:
                    ax.scatter([p[0]], [p[1]], marker="x", c="black", s=30)
                    continue
                ab = AnnotationBbox(
                    _image_box(im, overlay_px, dpi),
                    tuple(p),
                    frameon=True,
                    pad=0.15,
                    bboxprops={"edgecolor": "black", "linewidth": 0.8},
                )
                ax.add_artist(ab)
                if overlay_labels is not None and k < len(overlay_labels) and overlay_labels[k]:
                    ax.annotate(
                        overlay_labels[k],
                        tuple(p),
                        xytext=(0, -overlay_px * 0.75),
                        textcoords="offset points",
                        ha="center",
                        va="top",
                        fontsize=6,
                    )
        # keep overlays inside the axes even when they fall outside the point cloud
        allp = np.vstack([pts, ov])
    else:
        allp = pts
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    ax.set_xlim(lo[0] - 0.05 * span[0], hi[0] + 0.05 * span[0])
    ax.set_ylim(lo[1] - 0.05 * span[1], hi[1] + 0.05 * span[1])
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, dpi)
