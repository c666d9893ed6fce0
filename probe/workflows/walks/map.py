"""The map workflow: a 2-D map (UMAP or PCA) of a feature set, optionally decoded on a grid
(``probe.map``, ``probe map``). The reducer and its cache live in :mod:`probe.geometry.maps`, the plot in
:mod:`probe.render.plots`, grid targets and sheets in :mod:`probe.workflows.walks.pipeline`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probe.errors import UsageError
from probe.geometry.maps import FeatureMap, fit_map, parse_grid
from probe.manifest import by_cell
from probe.rundir import RunDir
from probe.workflows.common import Note, output_dir, resolve_encoder
from probe.workflows.decode import DecodeResult, decode_into
from probe.workflows.decode.pipeline import DecodeEvent, prepare_out_dir
from probe.workflows.options import DecodeOptions
from probe.workflows.walks.pipeline import (
    check_set_matches_encoder,
    grid_sheets,
    grid_targets,
    load_cell,
    open_feature_set,
    read_overlay,
    thumbnails_for,
)

METHODS = ("umap", "pca")
MAX_ROWS = 5000  # UMAP on 5k rows takes about a minute on one core; 60k rows would take many


@dataclass
class MapResult:
    """The map's points (one per row used), their labels and the fitted reducer; with a grid, its decode."""

    points: np.ndarray  # [n, 2]
    rows: np.ndarray  # indices of the rows used in the group
    labels: np.ndarray | None
    label_names: list[str] | None
    feature_map: FeatureMap
    summary: dict  # map.json
    decode: DecodeResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.summary


def run(store: str | Path, *, group: str | None = None, method: str = "umap", max_rows: int = MAX_ROWS,
        thumbnails: int = 0, overlays: Sequence[str | Path] = (), grid: tuple[int, int] | str | None = None,
        encoder: Any = None, prior: Any = None, out: str | Path | None = None,
        options: DecodeOptions | None = None, device: str | None = None,
        on_event: Callable[[DecodeEvent], None] | None = None, on_note: Note | None = None,
        on_warning: Note | None = None, **decode_options: Any) -> MapResult:
    """Fit (or load from the store's cache) a 2-D ``method`` map of the feature set in ``store``.

    At most ``max_rows`` rows are used (a subsample seeded by ``seed``, which also seeds UMAP; 0 = all).
    ``thumbnails`` draws that many source images, ``overlays`` place the decoded images of earlier decode
    outputs. ``grid=(rows, cols)`` (or ``"4x4"``) decodes the features the reducer's inverse gives at a grid
    of map points with ``encoder`` (default: the store's) and the decode options of :func:`probe.decode`
    (``samples`` defaults to 1). With ``out`` the folder gets map.png, map.json, map.npz (and the decode).
    """
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if max_rows < 0:
        raise UsageError(f"--max-rows must be >= 0, got {max_rows}")
    grid = parse_grid(grid) if isinstance(grid, str) else grid
    opts = DecodeOptions.build(options or DecodeOptions(samples=1), **decode_options)
    store = Path(store)
    note = on_note or (lambda _m: None)
    warn = on_warning or (lambda _m: None)
    with output_dir(out) as folder:
        if grid is not None:
            prepare_out_dir(folder, opts.overwrite)  # refuse an old decode before the (slow) fit
        with open_feature_set(store, group, max_rows or None, opts.seed) as fs:
            if fs.cache is None:
                warn(f"{store} is read-only: the fitted map will not be cached")
            sub = f" (a seeded subsample of {fs.total_rows})" if len(fs.rows) < fs.total_rows else ""
            note(f"{method} map of {fs.source}: {len(fs.rows)} rows{sub}")
            fmap = fit_map(fs.features, method, opts.seed, fs.cache, source=fs.source)
            note("cached fit" if fmap.cached else "fitted" + (" and cached" if fs.cache else ""))
            ov_pts, ov_imgs, ov_labels = [], [], []
            for d in overlays:
                feats, imgs, labels = read_overlay(d, dict(fs.attrs), fmap.dim)
                ov_pts.append(fmap.transform(feats, f"{d}/features.h5"))
                ov_imgs += imgs
                ov_labels += labels
            thumbs = thumbnails_for(fs, thumbnails, opts.seed)
            if thumbnails and not thumbs:
                warn(f"--thumbnails: no source image of {fs.source} is readable on disk")
            if grid is not None:
                enc = resolve_encoder(encoder, store, fs.group, device)
                check_set_matches_encoder(fs, enc)
                targets = grid_targets(fmap, *grid)
        folder.mkdir(parents=True, exist_ok=True)
        decoded = None
        if grid is not None:
            decoded = decode_into(folder, enc, targets, prior, opts, on_event, keep=out is not None)
            grid_sheets(folder, targets, decoded.records, grid[0], grid[1], opts.samples,
                        f"{method} map of {fs.source}: {grid[0]}×{grid[1]} grid")
            cells = by_cell(decoded.records)
            for t in targets:
                r = cells.get((t.id, 0))
                ov_pts.append(np.array([[t.extra["map_x"], t.extra["map_y"]]], dtype=np.float32))
                ov_imgs.append(load_cell(folder, r.image) if r else None)
                ov_labels.append("")
        summary = _write_map(folder, store, fs, fmap, method, sub, thumbs, overlays, ov_pts, ov_imgs, ov_labels,
                             grid, decoded)
    return MapResult(points=fmap.points, rows=fs.rows, labels=fs.labels, label_names=fs.label_names,
                     feature_map=fmap, summary=summary, decode=decoded)


def _write_map(folder: Path, store: Path, fs, fmap: FeatureMap, method: str, sub: str, thumbs: dict,
               overlays: Sequence[str | Path], ov_pts: list, ov_imgs: list, ov_labels: list,
               grid: tuple[int, int] | None, decoded: DecodeResult | None) -> dict:
    """map.png, map.npz and map.json; returns map.json's content."""
    from probe.render.plots import plot_map

    title = f"{method} map of {fs.source}" + (f" ({len(fs.rows)} of {fs.total_rows} rows)" if sub else "")
    plot_map(fmap.points, fs.labels, fs.label_names, out_png=RunDir(folder).walk_file("map.png"),
             thumbnails=thumbs or None,
             overlay_points=np.concatenate(ov_pts) if ov_pts else None,
             overlay_images=ov_imgs if ov_pts else None, overlay_labels=ov_labels if ov_pts else None,
             title=title)
    np.savez(RunDir(folder).walk_file("map.npz"), rows=fs.rows, points=fmap.points,
             labels=fs.labels if fs.labels is not None else np.full(len(fs.rows), -1))
    summary = {"store": str(store), "group": fs.group, "method": method, "params": fmap.config.params(),
               "cached": fmap.cached, "rows": int(len(fs.rows)), "total_rows": fs.total_rows,
               "bounds": list(fmap.bounds), "overlays": [str(d) for d in overlays],
               "thumbnails": len(thumbs), "grid": list(grid) if grid else None,
               "files": {"map": str(RunDir(folder).walk_file("map.png")),
                         "points": str(RunDir(folder).walk_file("map.npz"))}}
    if decoded is not None:
        summary["files"].update(grid=str(RunDir(folder).walk_file("grid.png")), manifest=str(RunDir(folder).manifest))
        summary["decode"] = {k: v for k, v in decoded.to_dict().items() if k != "records"}
    RunDir(folder).walk_file("map.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
