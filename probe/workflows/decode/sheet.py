"""The contact sheet of a decode folder: targets down, samples across, the unguided baseline below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probe.containment import inside, is_inside
from probe.images import fs_path, read_image01, to_uint8
from probe.manifest import SampleRecord, by_cell
from probe.render.sheets import flag_caption, image_grid
from probe.render.sheets import save_png as save_sheet
from probe.rundir import RunDir
from probe.targets import Target


def write_contact_sheet(out: Path, records: Sequence[SampleRecord], targets: Sequence[Target], samples: int, seed: int,
                        title: str) -> Path | None:
    """Targets down, samples across (with the target image first when there is one), the unguided
    baseline as the last row; every caption gives the distance and the relative distance."""
    if not records:
        return None
    recs = by_cell(records)
    ids = {r.target_id for r in records}
    rows = [t for t in targets if t.id in ids]
    show_target = any(t.image_path and fs_path(t.image_path).is_file() for t in rows)
    cells, captions, labels = [], [], []

    def load(path: Path):
        try:
            return to_uint8(read_image01(path))
        except Exception:  # noqa: BLE001 - a missing picture is drawn as an empty cell
            return None

    for t in rows:
        row, caps = [], []
        if show_target:
            row.append(load(fs_path(t.image_path)) if t.image_path else None)
            caps.append("target")
        for s in range(samples):
            r = recs.get((t.id, s))
            row.append(load(inside(out, r.image)) if r and is_inside(out, r.image) else None)
            if r:
                rel, nat = r.relative_distance, r.naturalness
                best = r.best_distance
                caps.append((f"d={best:.3g}" if best is not None else "d=n/a")  # null: it diverged
                            + (f"\nrel={rel:.2f}" if rel is not None else "")
                            + (f"\nreal={nat:.2f}" if nat is not None else "")
                            + (f"\n{flag_caption(r)}" if r.flagged else ""))
            else:
                caps.append("")
        cells.append(row)
        captions.append(caps)
        labels.append(t.id if t.label is None else f"{t.id}\n{t.label}")
    base = [RunDir(out).baseline_image(s) for s in range(samples)]
    if all(p.is_file() for p in base):
        imgs = [load(p) for p in base]
        blank = [np.full_like(imgs[0], 255)] if show_target and imgs[0] is not None else [None] * show_target
        cells.append(blank + imgs)
        captions.append([""] * show_target + [f"seed {seed + s}" for s in range(samples)])
        labels.append("unguided")
    cols = (["target"] if show_target else []) + [f"s{s:02d}" for s in range(samples)]
    sheet = image_grid(cells, captions=captions, row_labels=labels, col_labels=cols, title=title)
    return save_sheet(sheet, RunDir(out).sheet)


def sheet_from_records(out: Path, records: list[SampleRecord]) -> Path | None:
    """The contact sheet a single-process run draws, rebuilt from the manifest alone."""
    targets, seen = [], set()
    for r in records:
        if r.target_id in seen:
            continue
        seen.add(r.target_id)
        t = r.target
        # the picture copied into OUT/targets/, never a path the record names elsewhere
        picture = str(inside(out, r.target_image, "target_image")) if r.target_image else None
        targets.append(Target(id=r.target_id, vector=np.zeros(0, dtype=np.float32), kind=t.get("kind", ""),
                              source=t.get("source", ""), index=t.get("index"), label=t.get("label"),
                              image_path=picture))
    first = records[0]
    s = first.settings
    title = f"{first.encoder} [{first.layer}] <- {first.prior} ({s.get('name')})"
    return write_contact_sheet(out, records, targets, int(s["samples"]), int(s["seed"]), title)
