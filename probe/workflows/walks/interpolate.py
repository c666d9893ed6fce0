"""The interpolate workflow: decode the features on the path from A to B (``probe.interpolate``,
``probe interpolate``). Path geometry lives in :mod:`probe.geometry.paths`, the strip and distance report
in :mod:`probe.workflows.walks.pipeline`; this module strings them together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.errors import UsageError
from probe.geometry.paths import DATA_MAX_ROWS, DATA_NEIGHBOURS, data_path
from probe.targets import Target
from probe.workflows.common import as_targets, output_dir, resolve_encoder, store_of
from probe.workflows.decode import DecodeResult, decode_into
from probe.workflows.decode.pipeline import DecodeEvent
from probe.workflows.options import DecodeOptions
from probe.workflows.walks.pipeline import (
    PathReport,
    check_set_matches_encoder,
    open_feature_set,
    path_report,
    path_targets,
)

PATH_KINDS = ("linear", "slerp", "data")


@dataclass
class InterpolateResult:
    """The decoded path: ``decode.images`` point by point (samples within a point), and the report."""

    a: Target
    b: Target
    targets: list[Target]  # the path points, p00 = A ... pNN = B
    decode: DecodeResult
    report: PathReport  # distances of every image to A and B; strip.png, distances.png, path.json

    @property
    def positions(self) -> list[float]:
        return self.report.positions

    def to_dict(self) -> dict[str, Any]:
        return {**self.report.summary, "decode": {k: v for k, v in self.decode.to_dict().items() if k != "records"}}


def run(encoder: Any, a: Any, b: Any, *, points: int = 7, path: str = "linear", group: str | None = None,
        store: str | Path | None = None, neighbours: int = DATA_NEIGHBOURS, prior: Any = None,
        out: str | Path | None = None, options: DecodeOptions | None = None, device: str | None = None,
        on_event: Callable[[DecodeEvent], None] | None = None, **decode_options: Any) -> InterpolateResult:
    """Decode ``points`` features on the ``path`` from ``a`` to ``b``: ``linear``, ``slerp``, or ``data``
    (through the k-NN graph of the feature set ``store``, by default the endpoints' own store:
    :func:`probe.geometry.paths.data_path`; its points lie between real features, where a straight line
    between two classes crosses empty space).

    ``a`` and ``b`` are targets in any form :func:`~probe.workflows.common.as_targets` takes, one each.
    ``encoder=None`` uses the encoder that made the store of a ``F.h5:ROW`` endpoint. Every point is
    decoded with the same seeds (decode options as :func:`probe.decode`; ``samples`` defaults to 1).
    """
    if points < 2:
        raise UsageError(f"--points must be at least 2 (the two endpoints), got {points}")
    if path not in PATH_KINDS:
        raise UsageError(f"--path must be one of {', '.join(PATH_KINDS)}, not {path!r}")
    opts = DecodeOptions.build(options or DecodeOptions(samples=1), **decode_options)
    enc = resolve_encoder(encoder, store_of(a, b), group, device)
    ends = []
    for value, name in ((a, "A"), (b, "B")):
        found = as_targets(enc, value, group, name)
        if len(found) != 1:
            raise UsageError(f"{name}: an endpoint is one target, got {len(found)}")
        ends.append(found[0])
    ta, tb = ends
    info = None
    if path == "data":
        pts, info = _data_path(ta, tb, points, store or store_of(a, b), group, neighbours, enc)
        targets = path_targets(ta, tb, points, path, pts)
    else:
        if store is not None:
            raise UsageError("--from applies to --path data")
        targets = path_targets(ta, tb, points, path)
    with output_dir(out) as folder:
        decoded = decode_into(folder, enc, targets, prior, opts, on_event, keep=out is not None)
        report = path_report(folder, ta, tb, targets, decoded.records, opts.samples, enc.spec, enc.layers,
                             path_info=info)
    return InterpolateResult(ta, tb, targets, decoded, report)


def _data_path(a: Target, b: Target, points: int, store: str | Path | None, group: str | None, neighbours: int,
               encoder: Any) -> tuple[Any, dict]:
    """The data path's points and what made them (path.json ``data_path``)."""
    if store is None:
        raise UsageError("--path data walks through a feature set: give --from SET.h5 (features of the same "
                         "encoder and layer), or endpoints of the form SET.h5:ROW")
    if neighbours < 1:
        raise UsageError(f"--neighbours must be >= 1, not {neighbours}")
    with open_feature_set(store, group, max_rows=DATA_MAX_ROWS) as fs:
        check_set_matches_encoder(fs, encoder)
        pts, visited = data_path(a.vector, b.vector, fs.features, points, neighbours)
        info = {"set": fs.source, "rows_used": int(len(fs.features)),
                "neighbours": int(neighbours), "visited_rows": [int(fs.rows[i]) for i in visited],
                "visited_images": [fs.paths[i] for i in visited] if fs.paths else []}
    return pts, info
