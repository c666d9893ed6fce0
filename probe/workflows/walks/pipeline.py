"""Glue for `probe interpolate`, `probe perturb` and `probe map`: targets in, pictures and summaries out.

The geometry lives in :mod:`probe.geometry` (paths, directions, 2-D maps) and decoding in
:mod:`probe.workflows.decode.pipeline`; this module connects them without any CLI code:

* feature sets -- the rows of a store group a direction or a map is computed from
  (:func:`open_feature_set`), opened writable when possible so fitted PCA/UMAP models are cached;
* target lists -- path points, perturbations and map-grid cells as :func:`probe.targets.vector_target`
  targets carrying their manifest extras (``path_position``; ``direction``/``scale``; ``grid_row``...);
* reports -- after the decode, distances of the decoded images (read back from ``OUT/features.h5``)
  to A/B or to the base, the strip/grid sheets and a JSON summary.

Distances are squared Euclidean distances between feature vectors, the quantity the sampler
minimises and every manifest ``best_distance`` reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.errors import InputError, UsageError
from probe.geometry.directions import Directions
from probe.geometry.maps import FeatureMap
from probe.geometry.paths import interpolation_path, path_positions
from probe.geometry.walk_range import column_labels, scale_at
from probe.manifest import Manifest, SampleRecord, by_cell, json_safe
from probe.rundir import RunDir
from probe.targets import Target, vector_target


def target_name(t: Target) -> str:
    """A short human name of a target for titles and legends."""
    if t.kind in ("hdf5", "medoid"):
        name = f"{Path(t.source.split(':')[0]).name}[{t.index}]" + (f" {t.label}" if t.label is not None else "")
        return name + (" (medoid)" if t.kind == "medoid" else "")
    if t.kind == "text":
        return repr(t.source[len("text:"):])
    return Path(t.source).name + (f"[{t.index}]" if t.index is not None else "")


# -- decoded output ----------------------------------------------------------------------------------------
def decoded_features(out: str | Path, encoder_spec: str, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """``OUT/features.h5`` as {image path relative to OUT: feature vector (layers concatenated)}."""
    from probe.store import FeatureStore, group_key

    with FeatureStore(RunDir(out).features, "r") as st:
        groups = [st.group(group_key(encoder_spec, layer)) for layer in layers]
        paths = groups[0].paths
        feats = np.concatenate([g.rows(slice(None)) for g in groups], axis=1)
    return dict(zip(paths, feats))


def _sqdist(a: np.ndarray, b: np.ndarray) -> float:
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum())


def load_cell(out: Path, rel: str | None) -> np.ndarray | None:
    from probe.containment import inside
    from probe.images import read_image01, to_uint8

    if not rel:
        return None
    path = inside(out, rel, "image")  # a manifest or store names files of its own run only
    try:
        return to_uint8(read_image01(path))
    except InputError:
        return None


def _source_image(t: Target) -> np.ndarray | None:
    from probe.images import fs_path, read_image01, to_uint8

    if t.image_path and fs_path(t.image_path).is_file():
        try:
            return to_uint8(read_image01(fs_path(t.image_path)))
        except InputError:
            return None
    return None


# -- interpolation ---------------------------------------------------------------------------------------
def path_targets(a: Target, b: Target, steps: int, kind: str, points: np.ndarray | None = None) -> list[Target]:
    """Targets at the path's points (``p00`` = A ... ``pNN`` = B) with ``path_position`` t; ``points``
    [steps, D] when the path was made elsewhere (``data``), else the ``kind`` of straight or spherical path."""
    if a.vector.shape != b.vector.shape:
        raise UsageError(f"A ({target_name(a)}) has {a.vector.size} dims but B ({target_name(b)}) has "
                         f"{b.vector.size}: they must come from the same encoder and layer")
    if points is None:
        points = interpolation_path(a.vector, b.vector, steps, kind)  # type: ignore[arg-type]
    ts = path_positions(steps)
    dim = a.vector.shape[0]
    width = max(2, len(str(steps - 1)))
    return [vector_target(p, f"p{i:0{width}d}", f"{kind} path {target_name(a)} -> {target_name(b)}", dim,
                          path_position=float(t), path_kind=kind, path_index=i)
            for i, (p, t) in enumerate(zip(points, ts))]


@dataclass
class PathReport:
    positions: list[float]
    distance_to_a: list[list[float]]  # [samples][points]
    distance_to_b: list[list[float]]
    best_distance: list[list[float]]
    files: dict[str, str] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def path_report(out: str | Path, a: Target, b: Target, targets: Sequence[Target], records: Sequence[SampleRecord],
                samples: int, encoder_spec: str, layers: Sequence[str], title: str | None = None,
                path_info: dict | None = None) -> PathReport:
    """Distances of every decoded image to A and B; writes strip.png, distances.png and path.json
    (``path_info``: what made a data path, under ``data_path``)."""
    from probe.render.plots import plot_path_distances
    from probe.render.sheets import image_grid, save_png

    out = Path(out)
    feats = decoded_features(out, encoder_spec, layers)
    cells = by_cell(records)
    ts = [float(t.extra["path_position"]) for t in targets]
    nan = float("nan")
    da = [[nan] * len(targets) for _ in range(samples)]
    db = [[nan] * len(targets) for _ in range(samples)]
    best = [[nan] * len(targets) for _ in range(samples)]
    rows, caps = [], []
    img_a, img_b = _source_image(a), _source_image(b)
    for s in range(samples):
        row, cap = [], []
        if img_a is not None:
            row.append(img_a)
            cap.append("A")
        for i, t in enumerate(targets):
            r = cells.get((t.id, s))
            f = feats.get(r.image) if r else None
            if r is None or f is None:
                row.append(None)
                cap.append("")
                continue
            da[s][i], db[s][i], best[s][i] = _sqdist(f, a.vector), _sqdist(f, b.vector), r.best_distance
            row.append(load_cell(out, r.image))
            cap.append(f"d={best[s][i]:.3g}\nA {da[s][i]:.3g} B {db[s][i]:.3g}" + _flag_line(r))
        if img_b is not None:
            row.append(img_b)
            cap.append("B")
        rows.append(row)
        caps.append(cap)
    cols = (["A"] if img_a is not None else []) + [f"t={t:.2f}" for t in ts] + (["B"] if img_b is not None else [])
    seed0 = (records[0].seed or 0) - records[0].sample if records else 0
    title = title or f"{target_name(a)} → {target_name(b)}"
    marks = [[False] * (img_a is not None) + [bool(cells[(t.id, s)].flagged) if (t.id, s) in cells else False
                                             for t in targets] for s in range(samples)]
    save_png(image_grid(rows, captions=caps, row_labels=[f"seed {seed0 + s}" for s in range(samples)],
                        col_labels=cols, title=title, marked=marks), RunDir(out).walk_file("strip.png"))
    plot_path_distances(ts, da, db, RunDir(out).walk_file("distances.png"), title=title,
                        endpoint_names=(f"A {target_name(a)}", f"B {target_name(b)}"))
    run = RunDir(out)
    files = {"strip": str(run.walk_file("strip.png")), "distances": str(run.walk_file("distances.png")),
             "manifest": str(run.manifest), "features": str(run.features)}
    kind = targets[0].extra.get("path_kind") if targets else None
    summary = {"a": {**a.record(), "name": target_name(a)}, "b": {**b.record(), "name": target_name(b)},
               "path": kind, **({"data_path": path_info} if path_info else {}),
               "steps": len(targets), "samples": samples, "positions": ts,
               "distance_a_b": _sqdist(a.vector, b.vector),
               "distance_to_a": da, "distance_to_b": db, "best_distance": best, "files": files,
               "points": [{"target_id": t.id, "path_position": ts[i],
                           "images": [cells[(t.id, s)].image if (t.id, s) in cells else None
                                      for s in range(samples)],
                           "flags": [cells[(t.id, s)].flag_reasons if (t.id, s) in cells else None
                                     for s in range(samples)]} for i, t in enumerate(targets)]}
    run.walk_file("path.json").write_text(json.dumps(json_safe(summary), indent=2))
    files["summary"] = str(run.walk_file("path.json"))
    return PathReport(ts, da, db, best, files, summary)


def _flag_line(rec: SampleRecord) -> str:
    """A caption line naming the checks that flagged a decode (red-framed on the sheet), or ""."""
    from probe.render.sheets import flag_caption

    words = flag_caption(rec)
    return f"\n{words}" if words else ""


# -- feature sets ------------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """Rows of one store group (possibly a seeded subsample) and the store to cache fits in."""

    path: Path
    group: str
    features: np.ndarray
    labels: np.ndarray | None
    label_names: list[str] | None
    paths: list[str]
    attrs: dict
    rows: np.ndarray  # indices of the rows used in the group
    total_rows: int
    cache: tuple[Any, str] | None  # (FeatureStore opened for writing, group) or None when read-only

    @property
    def source(self) -> str:
        return f"{self.path}:{self.group}"


@contextmanager
def open_feature_set(path: str | Path, group: str | None = None, max_rows: int | None = None,
                     seed: int = 0) -> Iterator[FeatureSet]:
    """Load a group's rows (a seeded subsample of ``max_rows`` when larger); the store stays open,
    writable if the file permits, so PCA/map fits can be cached in it."""
    from probe.store import FeatureStore

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature store not found")
    writable = True
    try:
        st = FeatureStore(path, "a")
    except (InputError, UsageError):  # read-only, or another probe process is writing it: no caching
        st, writable = FeatureStore(path, "r"), False
    try:
        g = st.group(group)
        n = len(g)
        if n == 0:
            raise InputError(f"{path}: group {g.name} is empty")
        rows = np.arange(n)
        if max_rows is not None and max_rows > 0 and n > max_rows:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        feats = g.rows(rows) if rows.size < n else g.rows(slice(None))
        labels = g.labels
        names = g.attrs.get("label_names")
        all_paths = g.paths
        yield FeatureSet(path=path, group=g.name, features=feats,
                         labels=None if labels is None else labels[rows],
                         label_names=[str(x) for x in names] if isinstance(names, list) else None,
                         paths=[all_paths[i] for i in rows], attrs=g.attrs, rows=rows, total_rows=n,
                         cache=(st, g.name) if writable else None)
    finally:
        st.close()


def check_set_matches_encoder(fs: FeatureSet, encoder) -> None:
    """The feature set must come from the encoder (spec, layer, weights, pooling) that decodes it."""
    from probe.store import FeatureStore
    from probe.targets import check_group_matches, feature_dim

    if fs.cache is not None:
        store = fs.cache[0]
        check_group_matches(store.group(fs.group), fs.path, encoder)
    else:
        with FeatureStore(fs.path, "r") as st:
            check_group_matches(st.group(fs.group), fs.path, encoder)
    dim = feature_dim(encoder)
    if fs.features.shape[1] != dim:
        raise UsageError(f"{fs.source} has {fs.features.shape[1]}-d features but {encoder.spec} gives {dim}")


# -- perturbation ------------------------------------------------------------------------------------------
def parse_pairs(text: str, label_names: Sequence[str] | None) -> list[tuple[int, int]]:
    """``0-9,1-7`` (from class 0 to class 9 ...) or by name ``Sneaker>Trouser`` (``>`` always works)."""
    names = list(label_names or [])

    def cls(token: str) -> int:
        token = token.strip()
        if token.lstrip("-").isdigit():
            return int(token)
        if token in names:
            return names.index(token)
        known = ", ".join(names) if names else "the store has no label names; use class numbers"
        raise UsageError(f"--pairs: unknown class {token!r} ({known})")

    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        sep = ">" if ">" in part else "-"
        if sep not in part[1:]:
            raise UsageError(f"--pairs: cannot read {part!r}; use FROM-TO pairs like 0-9,1-7 (or NAME>NAME)")
        lo, hi = part.split(sep, 1) if sep == ">" else (part[:part.index("-", 1)], part[part.index("-", 1) + 1:])
        out.append((cls(lo), cls(hi)))
    if not out:
        raise UsageError("--pairs: no class pairs given")
    return out


def make_directions(kind: str, fs: FeatureSet, components: Sequence[int] | None, pairs: str | None,
                    seed: int) -> Directions:
    """Directions of kind ``pca`` / ``class`` / ``random`` / ``npy:PATH`` with their std on the set."""
    from probe.geometry.directions import class_mean_directions, load_directions, pca_directions, random_directions

    comps = list(components) if components else None
    if kind == "pca":
        return pca_directions(fs.features, comps or [1, 2, 3, 4, 5], cache=fs.cache, source=fs.source, seed=seed)
    if kind == "class":
        if fs.labels is None:
            raise UsageError(f"{fs.source} has no labels: class directions need a store extracted with labels "
                             "(probe extract --labels ...); use --directions pca or random")
        pair_list = parse_pairs(pairs, fs.label_names) if pairs else None
        return class_mean_directions(fs.features, fs.labels, pair_list, fs.label_names, source=fs.source)
    if kind == "random":
        comps = comps or [1, 2, 3, 4, 5]
        d = random_directions(fs.features.shape[1], max(comps), seed, fs.features, fs.source)
        return _select(d, comps)
    if kind.startswith("npy:"):
        d = load_directions(kind[4:], fs.features.shape[1], fs.features, fs.source)
        if comps:
            if max(comps) > len(d):
                raise UsageError(f"{kind[4:]} holds {len(d)} direction(s); --components asks for {max(comps)}")
            d = _select(d, comps)
        return d
    raise UsageError(f"--directions: unknown kind {kind!r}; use pca, class, random or npy:PATH")


def _select(d: Directions, comps: Sequence[int]) -> Directions:
    idx = [c - 1 for c in comps]
    return Directions(vectors=d.vectors[idx], names=[d.names[i] for i in idx],
                      std=None if d.std is None else d.std[idx], center=d.center, metadata=d.metadata)


def perturb_targets(base: Target, dirs: Directions, scales: Sequence[float]) -> list[Target]:
    """Row-major targets ``d{k}-s{j}`` = base + scale_j · std_k · v_k with their manifest extras."""
    from probe.geometry.directions import perturbation_targets

    if base.vector.shape[0] != dirs.dim:
        raise UsageError(f"the target ({target_name(base)}) has {base.vector.size} dims but the feature set "
                         f"has {dirs.dim}: they must come from the same encoder and layer")
    grid = perturbation_targets(base.vector, dirs, scales)
    evr = dirs.metadata.get("explained_variance_ratio")
    out = []
    for k in range(len(dirs)):
        info = json.loads(json.dumps(dirs.to_record(k), default=_jsonable))  # numpy scalars -> JSON
        for j in range(np.shape(scales)[-1]):
            s = scale_at(scales, k, j)
            extra = {"direction": dirs.names[k], "direction_index": k, "scale": s, "scale_index": j,
                     "direction_info": info, "base": {**base.record(), "name": target_name(base)}}
            if evr is not None:
                extra["explained_variance_ratio"] = float(evr[k])
            out.append(vector_target(grid[k, j], f"d{k:02d}-s{j:02d}", f"{dirs.names[k]} {s:+g} std", dirs.dim,
                                     **extra))
    return out


def perturb_report(out: str | Path, base: Target, dirs: Directions, scales: Sequence[float],
                   targets: Sequence[Target], records: Sequence[SampleRecord], samples: int, encoder_spec: str,
                   layers: Sequence[str], title: str | None = None) -> dict:
    """grid.png (rows = directions × samples, columns = scales) and perturb.json."""
    from probe.render.sheets import image_grid, save_png

    out = Path(out)
    feats = decoded_features(out, encoder_spec, layers)
    cells = by_cell(records)
    base_img = _source_image(base)
    evr = dirs.metadata.get("explained_variance_ratio")
    rows, caps, labels, table, marks = [], [], [], [], []
    nan = float("nan")
    for k in range(len(dirs)):
        for s in range(samples):
            row, cap = ([base_img], ["target"]) if base_img is not None else ([], [])
            mark = [False] * len(row)
            for j in range(np.shape(scales)[-1]):
                scale, t = scale_at(scales, k, j), targets[k * np.shape(scales)[-1] + j]
                r = cells.get((t.id, s))
                f = feats.get(r.image) if r else None
                d_base = _sqdist(f, base.vector) if f is not None else nan
                row.append(load_cell(out, r.image) if r else None)
                cap.append(f"d={r.best_distance:.3g}\nΔbase {d_base:.3g}" + _flag_line(r) if r else "")
                mark.append(bool(r and r.flagged))
                table.append({"direction": dirs.names[k], "scale": float(scale), "sample": s,
                              "target_id": t.id, "image": r.image if r else None,
                              "best_distance": r.best_distance if r else None,
                              "distance_to_base": d_base, "flags": r.flag_reasons if r else None})
            rows.append(row)
            caps.append(cap)
            marks.append(mark)
            label = dirs.names[k]
            if evr is not None:
                label += f"\n{float(evr[k]):.1%} var"
            if samples > 1:
                label += f"\ns{s:02d}"
            labels.append(label)
    cols = (["target"] if base_img is not None else []) + column_labels(scales, dirs.metadata.get("percentiles"))
    title = title or f"{target_name(base)}: {dirs.metadata.get('source')} directions"
    save_png(image_grid(rows, captions=caps, row_labels=labels, col_labels=cols, title=title, marked=marks),
             RunDir(out).walk_file("grid.png"))
    run = RunDir(out)
    files = {"grid": str(run.walk_file("grid.png")), "manifest": str(run.manifest),
             "features": str(run.features), "summary": str(run.walk_file("perturb.json"))}
    summary = {"base": {**base.record(), "name": target_name(base)}, "directions": [dirs.to_record(k)
                                                                                   for k in range(len(dirs))],
               "source": dirs.metadata.get("source"), "cached_fit": dirs.metadata.get("cached"),
               "scales": np.asarray(scales, dtype=float).tolist(), "percentiles": dirs.metadata.get("percentiles"),
               "samples": samples, "cells": table, "files": files}
    run.walk_file("perturb.json").write_text(json.dumps(json_safe(summary), indent=2, default=_jsonable))
    return summary


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


# -- maps --------------------------------------------------------------------------------------------------
def grid_targets(fmap: FeatureMap, rows: int, cols: int) -> list[Target]:
    """Targets at a rows×cols grid over the map (row 0 at the top), from the reducer's inverse."""
    pts = fmap.grid_points(rows, cols)
    vecs = fmap.inverse_transform(pts)
    out = []
    for i, (p, v) in enumerate(zip(pts, vecs)):
        r, c = divmod(i, cols)
        out.append(vector_target(v, f"g{r:02d}-{c:02d}", f"{fmap.method} map grid ({r}, {c})", fmap.dim,
                                 grid_row=r, grid_col=c, map_x=float(p[0]), map_y=float(p[1]),
                                 map_method=fmap.method))
    return out


def grid_sheets(out: str | Path, targets: Sequence[Target], records: Sequence[SampleRecord], rows: int, cols: int,
                samples: int, title: str) -> list[Path]:
    """grid.png (sample 0) and grid_sNN.png for further samples: the decoded grid as laid out on the map."""
    from probe.render.sheets import image_grid, save_png

    out = Path(out)
    cells = by_cell(records)
    written = []
    for s in range(samples):
        imgs, caps, marks = [], [], []
        for r in range(rows):
            ri, rc = [], []
            for c in range(cols):
                rec = cells.get((targets[r * cols + c].id, s))
                ri.append(load_cell(out, rec.image) if rec else None)
                rc.append(f"d={rec.best_distance:.3g}" + _flag_line(rec) if rec else "")
            imgs.append(ri)
            caps.append(rc)
            marks.append([bool(rec and rec.flagged) for rec in (cells.get((targets[r * cols + c].id, s))
                                                                for c in range(cols))])
        written.append(save_png(image_grid(imgs, captions=caps, title=title, marked=marks), RunDir(out).grid_image(s)))
    return written


def read_overlay(decode_dir: str | Path, attrs: dict, dim: int) -> tuple[np.ndarray, list[np.ndarray | None],
                                                                          list[str]]:
    """Decoded features, images and labels of a decode/interpolate/perturb output for a map overlay."""
    from probe.store import FeatureStore, group_key

    d = Path(decode_dir)
    if not RunDir(d).features.is_file() or not RunDir(d).manifest.is_file():
        raise InputError(f"--overlay {d}: not a decode output (needs manifest.jsonl and features.h5)")
    key = group_key(str(attrs.get("model_spec")), str(attrs.get("layer")))
    with FeatureStore(RunDir(d).features, "r") as st:
        if key not in st.group_names():
            raise UsageError(f"--overlay {d}: decoded with {', '.join(st.group_names()) or 'nothing'}, but the "
                             f"map is of {key}; overlay outputs decoded with the map's encoder and layer")
        g = st.group(key)
        if g.dim != dim:
            raise UsageError(f"--overlay {d}: {g.dim}-d features but the map has {dim}")
        feats, paths = g.rows(slice(None)), g.paths
    records = Manifest.read(d).by_image()
    images, labels = [], []
    for p in paths:
        images.append(load_cell(d, p))
        rec = records.get(p)
        lab = Path(p).stem if rec is None else rec.target_id
        if rec is not None and rec.path_position is not None:
            lab = f"t={rec.path_position:.2f}"
        elif rec is not None and rec.scale is not None and rec.direction is not None:
            lab = f"{rec.direction} {rec.scale:+g}σ"
        labels.append(str(lab))
    return feats, images, labels


def thumbnails_for(fs: FeatureSet, n: int, seed: int) -> dict[int, np.ndarray]:
    """Up to ``n`` source images of the set's rows whose paths are readable, chosen with ``seed``."""
    from probe.images import fs_path, read_image01, to_uint8

    if n <= 0:
        return {}
    order = np.random.default_rng(seed).permutation(len(fs.paths))
    out: dict[int, np.ndarray] = {}
    for i in order:
        p = fs.paths[int(i)]
        if p and not p.startswith("text:") and fs_path(p).is_file():
            try:
                out[int(i)] = to_uint8(read_image01(fs_path(p)))
            except InputError:
                continue
            if len(out) >= n:
                break
    return out
