"""``probe interpolate``, ``probe perturb`` and ``probe map``: decoding walks through feature space.

Thin layer: parse options, build targets and reports with probe.walks (geometry in probe.directions),
decode with probe.decoding exactly as ``probe decode`` does (same options, same output directory), and
print progress on stderr or a summary as JSON on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from probe import walks
from probe.cli.console import console, emit_json, quiet, say, warn
from probe.cli.decode import config_from_options, decode_with_progress, result_table, schedule_options
from probe.cli.options import load_encoder_from_options
from probe.decoding import DecodeSettings, DecodeSummary, prepare_out_dir
from probe.diffusion.priors import DEFAULT_PRIOR
from probe.errors import UsageError
from probe.manifest import by_cell
from probe.models.registry import DEFAULT_ENCODER

MAP_MAX_ROWS = 5000  # UMAP on 5k rows takes about a minute on one core; 60k rows would take many


def decode_options(samples: int = 1, out_help: str = "Output folder."):
    """The options every decoding command shares with ``probe decode``."""

    def wrap(fn):
        opts = [
            click.option("--prior", default=DEFAULT_PRIOR, show_default=True,
                         help="Diffusion prior: bundled:NAME, a local diffusers folder, or a hub id."),
            click.option("-m", "--encoder", "--model", "spec",
                         help="Network whose features are decoded [default: the one that made the store, "
                              f"else {DEFAULT_ENCODER}]."),
            click.option("--weights", help="Local checkpoint for a timm/open_clip architecture, or 'random'."),
            click.option("--layer", "layers", multiple=True,
                         help="Layer to match [default: the store's layer, else the embedding]; repeatable."),
            click.option("--keep-spatial", is_flag=True, help="Match hooked maps whole instead of pooled."),
            click.option("--token-pool", type=click.Choice(["cls", "mean"]),
                         help="ViT token pooling [default: the store's, else cls]."),
            click.option("-n", "--samples", default=samples, show_default=True,
                         help="Decoded images per target; sample s uses seed SEED+s for every target."),
            click.option("--seed", default=0, show_default=True, help="Base seed of the samples."),
            click.option("--batch-size", default=8, show_default=True, help="Chains decoded together."),
            schedule_options,
            click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                         help=out_help),
            click.option("--overwrite", is_flag=True, help="Replace a previous decode in --out."),
            click.option("--no-baseline", is_flag=True, help="Skip the unguided baseline samples."),
            click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda when present]"),
            click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return wrap


def _encoder(kw: dict, store: Path | None = None, group: str | None = None):
    """Load the encoder; with no --encoder, the one recorded in ``store`` (else the default)."""
    opts = {"spec": kw.pop("spec"), "weights": kw.pop("weights"), "layers": list(kw.pop("layers")),
            "keep_spatial": kw.pop("keep_spatial"), "token_pool": kw.pop("token_pool"), "device": kw.pop("device")}
    if opts["spec"] is None and store is not None:
        base = walks.encoder_defaults_from_store(store, group)
        opts["spec"] = base["spec"]
        opts["weights"] = opts["weights"] or base["weights"]
        opts["layers"] = opts["layers"] or base["layers"]
        opts["keep_spatial"] = opts["keep_spatial"] or base["keep_spatial"]
        opts["token_pool"] = opts["token_pool"] or base["token_pool"]
    opts["spec"] = opts["spec"] or DEFAULT_ENCODER
    opts["token_pool"] = opts["token_pool"] or "cls"
    return load_encoder_from_options(opts)


def _settings(kw: dict) -> DecodeSettings:
    config = config_from_options(kw)
    return DecodeSettings(samples=kw.pop("samples"), seed=kw.pop("seed"), batch_size=kw.pop("batch_size"),
                          config=config, baseline=not kw.pop("no_baseline"), overwrite=kw.pop("overwrite"))


def _show(summary: DecodeSummary) -> None:
    if not quiet():
        console().print(result_table(summary))


# -- interpolate -----------------------------------------------------------------------------------------
@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--group", help="Store group of STORE.h5:ROW endpoints [default: the encoder's, or the only one].")
@click.option("-k", "--points", default=7, show_default=True,
              help="Points on the path, both endpoints included (--steps is the sampler's override).")
@click.option("--path", "path_kind", type=click.Choice(["linear", "slerp"]), default="linear", show_default=True,
              help="linear: (1-t)A + tB. slerp: great circle between the directions, norm linear in t.")
@decode_options(out_help="Output folder: the decode directory plus strip.png, distances.png, path.json.")
def interpolate(a, b, group, points, path_kind, as_json, **kw) -> None:
    """Decode the features on the path from A to B.

    A and B are each one target: STORE.h5:ROW (row index or stored image path, --group picks the
    group), image:PATH or a plain image path, text:PROMPT (CLIP encoders) or vector:PATH (.npy/.txt
    with one vector; vector:PATH:ROW for one row of a matrix). Every point is decoded with the same
    seeds (sample s uses SEED+s), so along a strip only the feature changes. Writes strip.png (rows =
    samples, columns = path points, each with the distance it reached and its distances to A and B),
    distances.png (distance to A and to B along the path), path.json, and the usual manifest.jsonl and
    features.h5.
    """
    if points < 2:
        raise UsageError(f"--points must be at least 2 (the two endpoints), got {points}")
    prior = kw.pop("prior")
    settings = _settings(kw)
    out = kw.pop("out")
    ref = walks.split_store_ref(a) or walks.split_store_ref(b)
    encoder = _encoder(kw, ref[0] if ref and ref[0].is_file() else None, group)
    ta = walks.parse_endpoint(a, encoder, group, "A")
    tb = walks.parse_endpoint(b, encoder, group, "B")
    targets = walks.path_targets(ta, tb, points, path_kind)
    summary = decode_with_progress(prior, encoder, targets, out, settings, f"{path_kind} path")
    report = walks.path_report(out, ta, tb, targets, summary.records, settings.samples, encoder.spec,
                               encoder.layers)
    if as_json:
        emit_json({**report.summary, "decode": {k: v for k, v in summary.to_dict().items() if k != "records"}})
    _show(summary)
    say(f"strip {out / 'strip.png'}, distances along the path {out / 'distances.png'}, "
        f"summary {out / 'path.json'} ({summary.seconds:.1f} s)")


# -- perturb ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("target")
@click.option("--from", "store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Feature store whose set gives the directions and their standard deviations.")
@click.option("--group", help="Group of --from [default: the only one]; also used for TARGET rows of --from.")
@click.option("--directions", "kind", default="pca", show_default=True,
              help="pca (principal components, fitted once and cached in the store), class (differences of "
                   "class means; needs labels), random (seeded unit directions) or npy:PATH ([D] or [K, D]).")
@click.option("--components", help="Which directions: 1-5, 1,3,4 [default: 1-5 for pca/random, all for npy].")
@click.option("--pairs", help="Class directions FROM-TO, e.g. 0-9,1-7 or NAME>NAME [default: every class vs the "
              "mean of all].")
@click.option("--scales", default="-3,-1.5,0,1.5,3", show_default=True,
              help="Steps in units of the set's standard deviation along each direction (the columns).")
@decode_options(out_help="Output folder: the decode directory plus grid.png and perturb.json.")
def perturb(target, store, group, kind, components, pairs, scales, as_json, **kw) -> None:
    """Decode TARGET moved along directions of a feature set.

    TARGET uses the form of interpolate's endpoints (STORE.h5:ROW, image:PATH or an image path,
    text:PROMPT, vector:PATH), or 'mean' for the mean of the --from set. Each direction k and scale
    s gives the target TARGET + s * std_k * v_k, where std_k is the set's standard deviation along
    v_k. Writes grid.png (rows = directions, columns = scales, each with its distance and its distance
    to TARGET's feature), perturb.json, manifest.jsonl (direction, scale, explained variance ratio for
    PCA) and features.h5.
    """
    from probe.directions import parse_components, parse_scales

    comps = parse_components(components) if components else None
    scale_list = parse_scales(scales)
    if kind == "class" and components:
        raise UsageError("--components selects pca/random/npy directions; class directions use --pairs")
    if pairs and kind != "class":
        raise UsageError("--pairs applies to --directions class")
    prior = kw.pop("prior")
    settings = _settings(kw)
    out = kw.pop("out")
    encoder = _encoder(kw, store, group)
    with walks.open_feature_set(store, group) as fs:
        walks.check_set_matches_encoder(fs, encoder)
        if fs.cache is None and kind == "pca":
            warn(f"{store} is read-only: the PCA fit will not be cached")
        dirs = walks.make_directions(kind, fs, comps, pairs, settings.seed)
        if target.strip() == "mean":
            from probe.targets import vector_target
            base = vector_target(fs.features.mean(axis=0), "mean", f"{fs.source} mean", fs.features.shape[1])
        else:
            ref = walks.split_store_ref(target)
            same = ref is not None and ref[0].resolve() == store.resolve()
            base = walks.parse_endpoint(target, encoder, group if same else None, "TARGET")
    targets = walks.perturb_targets(base, dirs, scale_list)
    if dirs.metadata.get("source") == "pca":
        say(f"PCA of {fs.source} ({fs.features.shape[0]} rows): "
            + ("cached fit" if dirs.metadata.get("cached") else "fitted and cached" if fs.cache else "fitted"))
    summary = decode_with_progress(prior, encoder, targets, out, settings,
                                   f"{len(dirs)} direction(s) x {len(scale_list)} scales")
    report = walks.perturb_report(out, base, dirs, scale_list, targets, summary.records, settings.samples,
                                  encoder.spec, encoder.layers)
    if as_json:
        emit_json({**report, "decode": {k: v for k, v in summary.to_dict().items() if k != "records"}})
    _show(summary)
    say(f"grid {out / 'grid.png'}, summary {out / 'perturb.json'} ({summary.seconds:.1f} s)")


# -- map -------------------------------------------------------------------------------------------------
@click.command("map")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", help="Group of FILE [default: the only one].")
@click.option("--method", type=click.Choice(["umap", "pca"]), default="umap", show_default=True,
              help="2-D reducer; the fit is cached in FILE, so repeated maps are fast and identical.")
@click.option("--max-rows", default=MAP_MAX_ROWS, show_default=True,
              help="Fit on a seeded subsample of this many rows (0 = all); UMAP on 60k rows is slow.")
@click.option("--thumbnails", default=0, show_default=True,
              help="Draw this many source images (paths readable on disk) at their points.")
@click.option("--overlay", "overlays", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A decode/interpolate/perturb output: its decoded images placed where their features "
                   "land; repeatable.")
@click.option("--grid", "grid_spec", help="ROWSxCOLS: decode the features the reducer's inverse gives for a grid "
              "over the map (grid.png, and the images on the map).")
@decode_options(out_help="Output folder: map.png, map.json, map.npz; with --grid also the decode directory "
                         "and grid.png.")
def map_(file, group, method, max_rows, thumbnails, overlays, grid_spec, as_json, **kw) -> None:
    """2-D map (UMAP or PCA) of the feature set in FILE, coloured by label.

    The decode options only matter with --grid, which decodes the features at a grid of map points
    (UMAP's inverse_transform, or the PCA plane) so each region of the space shows what it looks like.
    The map is fitted on at most --max-rows rows (a seeded subsample; SEED also seeds UMAP).
    """
    from probe.directions import fit_map, parse_grid
    from probe.render.plots import plot_map

    grid = parse_grid(grid_spec) if grid_spec else None
    prior = kw.pop("prior")
    settings = _settings(kw)
    out: Path = kw.pop("out")
    if max_rows < 0:
        raise UsageError(f"--max-rows must be >= 0, got {max_rows}")
    if grid is not None:
        prepare_out_dir(out, settings.overwrite)  # refuse an old decode before the (slow) fit
    with walks.open_feature_set(file, group, max_rows or None, settings.seed) as fs:
        if fs.cache is None:
            warn(f"{file} is read-only: the fitted map will not be cached")
        sub = f" (a seeded subsample of {fs.total_rows})" if len(fs.rows) < fs.total_rows else ""
        say(f"{method} map of {fs.source}: {len(fs.rows)} rows{sub}")
        fmap = fit_map(fs.features, method, settings.seed, fs.cache, source=fs.source)
        say("cached fit" if fmap.cached else "fitted" + (" and cached" if fs.cache else ""))
        attrs = dict(fs.attrs)
        ov_pts, ov_imgs, ov_labels = [], [], []
        for d in overlays:
            feats, imgs, labels = walks.read_overlay(d, attrs, fmap.dim)
            ov_pts.append(fmap.transform(feats, f"{d}/features.h5"))
            ov_imgs += imgs
            ov_labels += labels
        thumbs = walks.thumbnails_for(fs, thumbnails, settings.seed)
        if thumbnails and not thumbs:
            warn(f"--thumbnails: no source image of {fs.source} is readable on disk")
        decode_summary = None
        if grid is not None:
            encoder = _encoder(kw, file, fs.group)
            walks.check_set_matches_encoder(fs, encoder)
            targets = walks.grid_targets(fmap, *grid)
    out.mkdir(parents=True, exist_ok=True)
    if grid is not None:
        decode_summary = decode_with_progress(prior, encoder, targets, out, settings, f"{grid[0]}x{grid[1]} map grid")
        walks.grid_sheets(out, targets, decode_summary.records, grid[0], grid[1], settings.samples,
                          f"{method} map of {fs.source}: {grid[0]}×{grid[1]} grid")
        cells = by_cell(decode_summary.records)
        for t in targets:
            r = cells.get((t.id, 0))
            ov_pts.append(np.array([[t.extra["map_x"], t.extra["map_y"]]], dtype=np.float32))
            ov_imgs.append(walks._load_cell(out, r.image) if r else None)
            ov_labels.append("")
    title = f"{method} map of {fs.source}" + (f" ({len(fs.rows)} of {fs.total_rows} rows)" if sub else "")
    plot_map(fmap.points, fs.labels, fs.label_names, out_png=out / "map.png", thumbnails=thumbs or None,
             overlay_points=np.concatenate(ov_pts) if ov_pts else None,
             overlay_images=ov_imgs if ov_pts else None, overlay_labels=ov_labels if ov_pts else None,
             title=title)
    np.savez(out / "map.npz", rows=fs.rows, points=fmap.points,
             labels=fs.labels if fs.labels is not None else np.full(len(fs.rows), -1))
    summary = {"store": str(file), "group": fs.group, "method": method, "params": fmap.config.params(),
               "cached": fmap.cached, "rows": int(len(fs.rows)), "total_rows": fs.total_rows,
               "bounds": list(fmap.bounds), "overlays": [str(d) for d in overlays],
               "thumbnails": len(thumbs), "grid": list(grid) if grid else None,
               "files": {"map": str(out / "map.png"), "points": str(out / "map.npz")}}
    if grid is not None:
        summary["files"].update(grid=str(out / "grid.png"), manifest=str(out / "manifest.jsonl"))
        summary["decode"] = {k: v for k, v in decode_summary.to_dict().items() if k != "records"}
    (out / "map.json").write_text(json.dumps(summary, indent=2, default=str))
    if as_json:
        emit_json(summary)
    if decode_summary is not None:
        _show(decode_summary)
    say(f"map {out / 'map.png'}" + (f", grid {out / 'grid.png'}" if grid else ""))
