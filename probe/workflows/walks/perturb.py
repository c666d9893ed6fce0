"""The perturb workflow: decode a target moved along directions of a feature set (``probe.perturb``,
``probe perturb``). Directions and their geometry live in :mod:`probe.geometry.directions`, the grid report in
:mod:`probe.workflows.walks.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.errors import UsageError
from probe.geometry.directions import Directions, parse_components, parse_scales
from probe.geometry.walk_range import DATA_PERCENTILES, data_scales, is_data, local_neighbours
from probe.targets import Target, row_image_path, row_label, split_store_ref, vector_target
from probe.workflows.common import Note, as_targets, output_dir, resolve_encoder
from probe.workflows.decode import DecodeResult, decode_into
from probe.workflows.decode.pipeline import DecodeEvent
from probe.workflows.options import DecodeOptions
from probe.workflows.walks.pipeline import (
    FeatureSet,
    check_set_matches_encoder,
    make_directions,
    open_feature_set,
    perturb_report,
    perturb_targets,
)

DEFAULT_SCALES = "data"  # percentiles of the set's projections along each direction (probe.geometry.walk_range)


@dataclass
class PerturbResult:
    """The decoded grid: ``decode.images`` direction by direction, scale by scale (samples within)."""

    base: Target
    directions: Directions
    scales: Any  # [S] shared, or [K, S] per direction for the data's range
    targets: list[Target]  # d{k}-s{j} = base + scale_kj * std_k * v_k
    decode: DecodeResult
    summary: dict  # perturb.json: per cell its distance to the base, the directions' records

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "decode": {k: v for k, v in self.decode.to_dict().items() if k != "records"}}


SET_CENTRES = ("mean", "medoid")


MEDOID_ROWS = 4096  # the medoid is searched among (and scored against) at most this many seeded rows


def set_centre(fs: FeatureSet, kind: str) -> Target:
    """The set's mean feature, or its medoid: the row with the smallest summed L2 distance to the others.

    The mean of a feature set is no image's feature (on Fashion-MNIST its decodes are cluttered hybrids
    of every class), so walks around it leave the data; the medoid is a real image's feature, and the
    walk starts from something the prior can draw. Not the row nearest the mean: in a set of several
    clusters that row sits between them, an atypical image (on 200 Fashion-MNIST test images an open coat
    whose feature lies outside the prior's domain, probe.reference); the medoid sits inside the largest."""
    if kind == "mean":
        return vector_target(fs.features.mean(axis=0), "mean", f"{fs.source} mean", fs.features.shape[1])
    i = medoid_index(fs.features)
    row = int(fs.rows[i])
    label = row_label(None if fs.labels is None else fs.labels[i], fs.label_names)
    return Target(id=f"medoid-row{row}", vector=np.asarray(fs.features[i], dtype=np.float32), kind="medoid",
                  source=fs.source, index=row, label=label, image_path=row_image_path(fs.paths[i]))


def medoid_index(features: np.ndarray, max_rows: int = MEDOID_ROWS, seed: int = 0) -> int:
    """Index of the row minimising the summed Euclidean distance to the others (among ``max_rows`` seeded
    rows of a larger set)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32).reshape(len(features), -1))
    rows = np.arange(len(x))
    if len(x) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
    sub = x[torch.from_numpy(rows)]
    sums = torch.cat([torch.cdist(sub[i:i + 512], sub).sum(1) for i in range(0, len(sub), 512)])
    return int(rows[int(torch.argmin(sums))])


def run(encoder: Any, target: Any, store: str | Path, *, group: str | None = None, directions: str = "pca",
        components: Sequence[int] | str | None = None, pairs: str | None = None,
        scales: Sequence[float] | str = DEFAULT_SCALES, prior: Any = None, out: str | Path | None = None,
        options: DecodeOptions | None = None, device: str | None = None,
        on_event: Callable[[DecodeEvent], None] | None = None, on_note: Note | None = None,
        on_warning: Note | None = None, **decode_options: Any) -> PerturbResult:
    """Decode ``target`` + s · std_k · v_k for directions v_k of the feature set in ``store``.

    ``directions``: ``pca`` (fitted once, cached in the store), ``class`` (differences of class means;
    ``pairs`` like ``0-9,1-7``), ``random`` or ``npy:PATH``; ``components`` picks them (``1-5``), ``scales``
    are the steps in standard deviations. ``target`` is any form :func:`probe.decode` takes, ``"mean"``
    for the set's mean, or ``"medoid"`` for its medoid (the row with the least summed distance to the
    others: a real image's feature).
    ``encoder=None`` uses the store's encoder. Decode options as :func:`probe.decode`
    (``samples`` defaults to 1).
    """
    comps = parse_components(components) if isinstance(components, str) else components
    scale_list = None if is_data(scales) else \
        parse_scales(scales) if isinstance(scales, str) else [float(s) for s in scales]
    if directions == "class" and comps:
        raise UsageError("--components selects pca/random/npy directions; class directions use --pairs")
    if pairs and directions != "class":
        raise UsageError("--pairs applies to --directions class")
    opts = DecodeOptions.build(options or DecodeOptions(samples=1), **decode_options)
    store = Path(store)
    enc = resolve_encoder(encoder, store, group, device)
    with open_feature_set(store, group) as fs:
        check_set_matches_encoder(fs, enc)
        if fs.cache is None and directions == "pca" and on_warning:
            on_warning(f"{store} is read-only: the PCA fit will not be cached")
        dirs = make_directions(directions, fs, comps, pairs, opts.seed)
        if isinstance(target, str) and target.strip() in SET_CENTRES:
            base = set_centre(fs, target.strip())
        else:
            ref = split_store_ref(target) if isinstance(target, str) else None
            same = ref is not None and ref[0].resolve() == store.resolve()
            found = as_targets(enc, target, group if same else None, "TARGET")
            if len(found) != 1:
                raise UsageError(f"TARGET: perturb one target at a time, got {len(found)}")
            base = found[0]
        if scale_list is None:  # the data's own spread along each direction
            k = local_neighbours(len(fs.features))
            scale_list = data_scales(fs.features, base.vector, dirs.vectors, dirs.std, neighbours=k)
            dirs.metadata["percentiles"] = list(DATA_PERCENTILES)
            dirs.metadata["range_neighbours"] = k
    if dirs.metadata.get("source") == "pca" and on_note:
        on_note(f"PCA of {fs.source} ({fs.features.shape[0]} rows): "
                + ("cached fit" if dirs.metadata.get("cached") else "fitted and cached" if fs.cache else "fitted"))
    targets = perturb_targets(base, dirs, scale_list)
    with output_dir(out) as folder:
        decoded = decode_into(folder, enc, targets, prior, opts, on_event, keep=out is not None)
        summary = perturb_report(folder, base, dirs, scale_list, targets, decoded.records, opts.samples, enc.spec,
                                 enc.layers)
    return PerturbResult(base, dirs, scale_list, targets, decoded, summary)
