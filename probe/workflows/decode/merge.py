"""Joining the shard folders of a split decode into the folder a single process would have written.

Shard i of N decodes into ``OUT/shards/000ii-of-000NN/`` (a complete decode folder of its own).
``merge_decodes`` moves the images into OUT, writes ``manifest.jsonl`` and ``features.h5`` in the
single-process order (target by target, sample by sample), draws the contact sheet and deletes the shard
folders. Records already in OUT (a resumed run) are kept; each (target, sample) once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from probe.containment import inside
from probe.distributed import Shard
from probe.errors import InputError, UsageError
from probe.locking import ProbeLock
from probe.manifest import Manifest, SampleRecord, write_metadata
from probe.rundir import RunDir
from probe.store import FeatureStore
from probe.workflows.decode.sheet import sheet_from_records
from probe.workflows.parts import NOT_RECORD


# -- decode folders ---------------------------------------------------------------------------------------
def decode_shard_root(out: Path) -> Path:
    return RunDir(out).shards


def decode_shard_dir(out: Path, shard: Shard) -> Path:
    return RunDir(out).shard(shard).root


def read_records(folder: Path, repair: bool = False) -> list[SampleRecord]:
    """The records of a decode folder's manifest (none when it has no manifest yet); a last line cut by
    a kill is dropped (and cut from the file when ``repair``), any other bad line is an InputError."""
    return Manifest.read(RunDir(folder).manifest, repair=repair, missing_ok=True).records


def canonical(records: Iterable[SampleRecord]) -> list[SampleRecord]:
    """Each (target, sample) once (the first seen), in single-process order."""
    seen: dict[tuple[str, int], SampleRecord] = {}
    for r in records:
        seen.setdefault(r.cell, r)
    return sorted(seen.values(), key=lambda r: (-1 if r.target_index is None else r.target_index, r.sample))


def decode_sources(out: Path) -> list[Path]:
    """OUT itself (when it holds records) and every shard folder, in a fixed order."""
    root = decode_shard_root(out)
    shards = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return ([out] if RunDir(out).manifest.is_file() else []) + shards


def _row_index(path: Path) -> dict[str, dict[str, tuple[np.ndarray, str, int]]]:
    """features.h5 of a decode folder: group -> image path -> (row, sha256, label)."""
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    with FeatureStore(path, "r") as st:
        for name in st.group_names():
            g = st.group(name)
            feats, labels = g.rows(slice(None)), g.raw_labels
            out[name] = {p: (feats[i], h, int(labels[i])) for i, (p, h) in enumerate(zip(g.paths, g.hashes))}
    return out


def _group_attrs(path: Path) -> dict[str, tuple[dict, int]]:
    with FeatureStore(path, "r") as st:
        return {n: (st.group(n).attrs, st.group(n).dim) for n in st.group_names()}


def write_decode_dir(out: Path, records: list[SampleRecord], sources: Sequence[Path]) -> None:
    """Write OUT/manifest.jsonl and OUT/features.h5 for ``records`` (in that order), taking feature rows
    from the sources' features.h5 files; both are written beside and renamed into place, so a kill leaves
    either the old or the new file."""
    rows: dict[str, dict] = {}
    attrs: dict[str, tuple[dict, int]] = {}
    for src in sources:
        for name, by_path in _row_index(RunDir(src).features).items():
            merged = rows.setdefault(name, {})
            for p, v in by_path.items():
                merged.setdefault(p, v)
        if RunDir(src).features.is_file():
            for name, a in _group_attrs(RunDir(src).features).items():
                attrs.setdefault(name, a)
    tmp_h5 = RunDir(out).features_merging
    tmp_h5.unlink(missing_ok=True)
    if attrs:
        with FeatureStore(tmp_h5, "a") as st:
            for name, (a, dim) in attrs.items():
                record = {k: v for k, v in a.items() if k not in NOT_RECORD}
                g = st.create_group(name, dim, record, a.get("layer", name.rsplit("/", 1)[-1]), kind="decoded",
                                    feature_shape=a.get("feature_shape"))
                have = [r for r in records if r.image in rows[name]]
                if have:
                    vals = [rows[name][r.image] for r in have]
                    g.append(np.stack([v[0] for v in vals]), [r.image for r in have], [v[1] for v in vals],
                             [v[2] for v in vals])
        os.replace(tmp_h5, RunDir(out).features)
    Manifest(RunDir(out).manifest).write(records)


FILE_KEYS = ("image", "final_image", "trajectory_image")


def merge_decodes(out: Path, sheet: bool = True, keep: bool = False, on_warning=None,
                  locked: bool = False) -> list[SampleRecord]:
    """Join OUT's shard folders (and OUT's own records) into OUT; returns the records in order.
    ``locked``: the caller already holds OUT's lock."""
    out = Path(out)
    sources = decode_sources(out)
    shard_dirs = [s for s in sources if s != out]
    if not shard_dirs:
        raise UsageError(f"{out}: no decode shards to merge (looked in {decode_shard_root(out)})")
    with contextlib.nullcontext() if locked else ProbeLock(out, lock_file=RunDir(out).lock):
        # refuse while a shard is still being written
        locks = [ProbeLock(s, lock_file=RunDir(s).lock).acquire() for s in shard_dirs]
        for lk in locks:
            lk.release()
        records = []
        for src in sources:
            for rec in read_records(src):
                if src != out:
                    ok = True
                    for key in FILE_KEYS:
                        rel = getattr(rec, key)
                        if not rel:
                            continue
                        s = inside(src, rel, key, where=RunDir(src).manifest)  # never "../../x" or "/etc/x"
                        d = inside(out, rel, key, where=RunDir(src).manifest)
                        if s.is_file():
                            d.parent.mkdir(parents=True, exist_ok=True)
                            os.replace(s, d)
                        elif not d.is_file():
                            ok = False
                    if not ok:
                        if on_warning:
                            on_warning(f"{src}: record {rec.cell} lost its image; it will be decoded again")
                        continue
                records.append(rec)
        for src in shard_dirs:
            if RunDir(src).baseline.is_dir():
                for f in sorted(RunDir(src).baseline.glob("*.png")):
                    if f.is_symlink():  # a link would carry an outside file into the run
                        continue
                    if not (RunDir(out).baseline / f.name).is_file():
                        RunDir(out).baseline.mkdir(parents=True, exist_ok=True)
                        os.replace(f, RunDir(out).baseline / f.name)
        records = canonical(records)
        _check_same_run(records, out)
        write_decode_dir(out, records, sources)
        write_metadata(out, records)  # images/metadata.jsonl, as a single process writes it
        if not keep:
            for src in shard_dirs:
                shutil.rmtree(src, ignore_errors=True)
            root = decode_shard_root(out)
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
        if sheet and records:
            sheet_from_records(out, records)
    return records


def _check_same_run(records: list[SampleRecord], out: Path) -> None:
    keys = ("prior", "encoder", "layer", "settings")
    if not records:
        return
    ref = {k: getattr(records[0], k) for k in keys}
    for r in records[1:]:
        for k in keys:
            if getattr(r, k) != ref[k]:
                raise InputError(f"{out}: shards of different runs ({k} {ref[k]!r} vs {getattr(r, k)!r}); "
                                 "merge only shards of one command")
