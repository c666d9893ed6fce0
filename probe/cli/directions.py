"""``probe interpolate``, ``probe perturb`` and ``probe map``: decoding walks through feature space.

Thin layer: parse options (probe.cli.options), call probe.workflows.walks.interpolate / perturb / map, and
print progress on stderr or a summary as JSON on stdout.
"""

from __future__ import annotations

from pathlib import Path

import click

from probe.cli.console import emit_json, say, warn
from probe.cli.decode import DecodeProgress, show
from probe.cli.options import COMPONENTS, GRID, decode_options
from probe.workflows.walks import interpolate as interpolate_workflow
from probe.workflows.walks import map as map_workflow
from probe.workflows.walks import perturb as perturb_workflow


# -- interpolate -----------------------------------------------------------------------------------------
@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--group", help="Store group of STORE.h5:ROW endpoints [default: the encoder's, or the only one].")
@click.option("-k", "--points", default=7, show_default=True,
              help="Points on the path, both endpoints included (--steps is the sampler's override).")
@click.option("--path", "path_kind", type=click.Choice(list(interpolate_workflow.PATH_KINDS)), default="linear",
              show_default=True,
              help="linear: (1-t)A + tB. slerp: great circle between the directions, norm linear in t. data: "
                   "the shortest path through the --from set's nearest-neighbour graph (points between real "
                   "features, where a straight line between two classes crosses empty space).")
@click.option("--from", "store", type=click.Path(path_type=Path), default=None,
              help="The feature set a --path data walks through [default: the endpoints' STORE.h5].")
@click.option("--neighbours", default=10, show_default=True, help="k of the --path data graph.")
@decode_options(samples=1, out_help="Output folder: the decode directory plus strip.png, distances.png, path.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def interpolate(a, b, group, points, path_kind, store, neighbours, prior, encoder, decode, out, as_json) -> None:
    """Decode the features on the path from A to B.

    A and B are each one target: STORE.h5:ROW (row index or stored image path, --group picks the
    group), image:PATH or a plain image path, text:PROMPT (CLIP encoders) or vector:PATH (.npy/.txt
    with one vector; vector:PATH:ROW for one row of a matrix). Every point is decoded with the same
    seeds (sample s uses SEED+s), so along a strip only the feature changes. Writes strip.png (rows =
    samples, columns = path points, each with the distance it reached and its distances to A and B),
    distances.png (distance to A and to B along the path), path.json, and the usual manifest.jsonl and
    features.h5.
    """
    with DecodeProgress(f"{path_kind} path") as on_event:
        result = interpolate_workflow.run(encoder, a, b, points=points, path=path_kind, group=group, store=store,
                                          neighbours=neighbours, prior=prior, out=out, options=decode,
                                          on_event=on_event)
    if as_json:
        emit_json(result.to_dict())
    show(result.decode.summary)
    say(f"strip {out / 'strip.png'}, distances along the path {out / 'distances.png'}, "
        f"summary {out / 'path.json'} ({result.decode.summary.seconds:.1f} s)")


# -- perturb ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("target")
@click.option("--from", "store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Feature store whose set gives the directions and their standard deviations.")
@click.option("--group", help="Group of --from [default: the only one]; also used for TARGET rows of --from.")
@click.option("--directions", "kind", default="pca", show_default=True,
              help="pca (principal components, fitted once and cached in the store), class (differences of "
                   "class means; needs labels), random (seeded unit directions) or npy:PATH ([D] or [K, D]).")
@click.option("--components", type=COMPONENTS,
              help="Which directions: 1-5, 1,3,4 [default: 1-5 for pca/random, all for npy].")
@click.option("--pairs", help="Class directions FROM-TO, e.g. 0-9,1-7 or NAME>NAME [default: every class vs the "
              "mean of all].")
@click.option("--scales", default="data", show_default=True,
              help="The columns: 'data' moves TARGET along each direction to the 1st, 10th, 50th, 90th and 99th "
                   "percentile of the projections of the set's rows nearest TARGET (10 %, at least 50: where real data "
                   "around TARGET lies), or steps in units of the set's "
                   "standard deviation, e.g. -3,-1.5,0,1.5,3.")
@decode_options(samples=1, out_help="Output folder: the decode directory plus grid.png and perturb.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def perturb(target, store, group, kind, components, pairs, scales, prior, encoder, decode, out, as_json) -> None:
    """Decode TARGET moved along directions of a feature set.

    TARGET uses the form of interpolate's endpoints (STORE.h5:ROW, image:PATH or an image path,
    text:PROMPT, vector:PATH), 'mean' for the mean of the --from set, or 'medoid' for its medoid, the
    row with the least summed distance to the others (a real image's feature: decodes of the mean
    itself are hybrids of every class). Each direction k and scale s gives the target
    TARGET + s * std_k * v_k, where std_k is the set's standard deviation along v_k. Writes grid.png
    (rows = directions, columns = scales, each with its distance and its distance to TARGET's
    feature), perturb.json, manifest.jsonl (direction, scale, explained variance ratio for
    PCA) and features.h5.
    """
    with DecodeProgress("perturb") as on_event:
        result = perturb_workflow.run(encoder, target, store, group=group, directions=kind, components=components,
                                      pairs=pairs, scales=scales, prior=prior, out=out, options=decode,
                                      on_event=on_event, on_note=say, on_warning=warn)
    if as_json:
        emit_json(result.to_dict())
    show(result.decode.summary)
    say(f"grid {out / 'grid.png'}, summary {out / 'perturb.json'} ({result.decode.summary.seconds:.1f} s)")


# -- map -------------------------------------------------------------------------------------------------
@click.command("map")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", help="Group of FILE [default: the only one].")
@click.option("--method", type=click.Choice(list(map_workflow.METHODS)), default="umap", show_default=True,
              help="2-D reducer; the fit is cached in FILE, so repeated maps are fast and identical.")
@click.option("--max-rows", default=map_workflow.MAX_ROWS, show_default=True,
              help="Fit on a seeded subsample of this many rows (0 = all); UMAP on 60k rows is slow.")
@click.option("--thumbnails", default=0, show_default=True,
              help="Draw this many source images (paths readable on disk) at their points.")
@click.option("--overlay", "overlays", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A decode/interpolate/perturb output: its decoded images placed where their features "
                   "land; repeatable.")
@click.option("--grid", "grid", type=GRID, help="ROWSxCOLS: decode the features the reducer's inverse gives for a "
              "grid over the map (grid.png, and the images on the map).")
@decode_options(samples=1, out_help="Output folder: map.png, map.json, map.npz; with --grid also the decode "
                                    "directory and grid.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def map_(file, group, method, max_rows, thumbnails, overlays, grid, prior, encoder, decode, out, as_json) -> None:
    """2-D map (UMAP or PCA) of the feature set in FILE, coloured by label.

    The decode options only matter with --grid, which decodes the features at a grid of map points
    (UMAP's inverse_transform, or the PCA plane) so each region of the space shows what it looks like.
    The map is fitted on at most --max-rows rows (a seeded subsample; SEED also seeds UMAP).
    """
    with DecodeProgress(f"{grid[0]}x{grid[1]} map grid" if grid else "map") as on_event:
        result = map_workflow.run(file, group=group, method=method, max_rows=max_rows, thumbnails=thumbnails,
                                  overlays=overlays, grid=grid, encoder=encoder, prior=prior, out=out,
                                  options=decode, on_event=on_event, on_note=say, on_warning=warn)
    if as_json:
        emit_json(result.to_dict())
    if result.decode is not None:
        show(result.decode.summary)
    say(f"map {out / 'map.png'}" + (f", grid {out / 'grid.png'}" if grid else ""))
