"""Joining the shards of a split run into the output a single process would have written.

Feature stores: shard i of N writes ``STORE.shards/000ii-of-000NN.h5``, whose rows carry their position
in the input list (``input_index``). ``merge_stores`` appends every shard's rows to STORE sorted by that
position, keeping the first row of each content hash (and none already in STORE), then deletes the
shards. It is idempotent: a merge killed half-way is rerun and appends only what is missing.

Decode folders: shard i of N decodes into ``OUT/shards/000ii-of-000NN/`` (a complete decode folder of
its own). ``merge_decodes`` moves the images into OUT, writes ``manifest.jsonl`` and ``features.h5`` in
the single-process order (target by target, sample by sample), draws the contact sheet and deletes
the shard folders. Records already in OUT (a resumed run) are kept; each (target, sample) once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe.containment import inside
from probe.distributed import Shard
from probe.errors import InputError, UsageError
from probe.locking import ProbeLock
from probe.manifest import MANIFEST, Manifest, SampleRecord, write_metadata
from probe.store import FeatureStore, record_mismatch

NOT_RECORD = {"layer", "kind", "feature_shape", "probe_version", "torch_version", "created", "updated",
              "label_names"}
CHUNK = 4096


# -- feature stores ---------------------------------------------------------------------------------------
def store_shard_dir(store: Path) -> Path:
    return store.with_name(store.name + ".shards")


def store_shard_path(store: Path, shard: Shard) -> Path:
    return store_shard_dir(store) / f"{shard.name}.h5"


@dataclass
class MergeSummary:
    target: Path
    shards: list[str]
    added: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def to_dict(self) -> dict:
        return {"target": str(self.target), "shards": self.shards, "added": self.added,
                "duplicates_skipped": self.duplicates}


def _remap_labels(labels: np.ndarray, names: list[str], merged: list[str]) -> np.ndarray:
    table = np.array([merged.index(n) for n in names] + [-1], dtype=np.int64)
    return table[np.where(labels >= 0, labels, len(names))]


def merge_stores(store: Path, shards: Sequence[Path] | None = None, keep: bool = False) -> MergeSummary:
    """Append the rows of ``shards`` (default: every file in STORE.shards/) to ``store`` in input order."""
    store = Path(store)
    shards = sorted(store_shard_dir(store).glob("*.h5")) if shards is None else [Path(s) for s in shards]
    if not shards:
        raise UsageError(f"{store}: no shards to merge (looked in {store_shard_dir(store)})")
    summary = MergeSummary(store, [str(s) for s in shards])
    with ProbeLock(store):
        opened = [FeatureStore(s, "r") for s in shards]
        try:
            names = sorted({n for st in opened for n in st.group_names()})
            for st in opened:  # shards of one run hold the same groups (a shard with no rows may hold none)
                have = st.group_names()
                if have and have != names:
                    raise InputError(f"{st.path}: holds groups {', '.join(have)} but other shards "
                                     f"{', '.join(sorted(set(names) - set(have)))}; merge only shards of one run")
            with FeatureStore(store, "a") as dst:
                for name in names:
                    added, dups = _merge_group(dst, name, [st for st in opened if name in st.group_names()])
                    summary.added[name] = added
                    summary.duplicates += dups
        finally:
            for st in opened:
                st.close()
    if not keep:
        for s in shards:
            s.unlink(missing_ok=True)
            for side in s.parent.glob(s.name + ".lock"):
                side.unlink(missing_ok=True)
        d = store_shard_dir(store)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return summary


def _merge_group(dst: FeatureStore, name: str, sources: list[FeatureStore]) -> tuple[int, int]:
    groups = [st.group(name) for st in sources]
    for st, g in zip(sources, groups):
        if g.input_index is None:
            raise InputError(f"{st.path}: group {name} is not a shard (no input_index); merge only "
                             "STORE.shards/ files")
    first = groups[0].attrs
    have = set(dst.group(name).hashes) if name in dst else set()
    # (input position, shard, row): the single-process order, ties broken by shard then row
    keys = [(int(pos), si, ri) for si, g in enumerate(groups) for ri, pos in enumerate(g.input_index)]
    keys.sort()
    hashes = [g.hashes for g in groups]
    chosen, dups = [], 0
    for _pos, si, ri in keys:
        h = hashes[si][ri]
        if h in have:
            dups += 1
            continue
        have.add(h)
        chosen.append((si, ri))
    if not chosen:
        return 0, dups
    record = {k: v for k, v in first.items() if k not in NOT_RECORD}
    for st, g in zip(sources[1:], groups[1:]):
        problem = record_mismatch(first, g.attrs)  # spec, weights (and their hash), layer, preprocessing
        if problem:
            raise InputError(f"{sources[0].path} and {st.path}: group {name} differs in {problem}; merge only "
                             "shards of one run")
    out = dst.create_group(name, groups[0].dim, record, first.get("layer", name.rsplit("/", 1)[-1]),
                           kind=first.get("kind", "image"), dtype=str(groups[0].features.dtype),
                           feature_shape=first.get("feature_shape"))
    label_names = [g.attrs.get("label_names") for g in groups]
    merged_names = None
    if any(label_names):
        from probe.extraction import _merge_label_names

        for names in label_names:
            merged_names = _merge_label_names(out, names or [])
    paths = [g.paths for g in groups]
    labels = [g._g["labels"][:] for g in groups]
    for start in range(0, len(chosen), CHUNK):
        part = chosen[start:start + CHUNK]
        feats = np.empty((len(part), groups[0].dim), dtype=groups[0].features.dtype)
        lab = np.full(len(part), -1, dtype=np.int64)
        for si, g in enumerate(groups):
            idx = [(j, ri) for j, (s, ri) in enumerate(part) if s == si]
            if not idx:
                continue
            rows = np.array([ri for _, ri in idx])
            order = np.argsort(rows)
            block = g.features[rows[order]]  # h5py wants increasing indices
            where = np.array([j for j, _ in idx])[order]
            feats[where] = block
            lab_si = labels[si][rows[order]]
            if merged_names is not None and label_names[si]:
                lab_si = _remap_labels(lab_si, label_names[si], merged_names)
            lab[where] = lab_si
        out.append(feats, [paths[s][r] for s, r in part], [hashes[s][r] for s, r in part], lab)
        dst.flush()
    return len(chosen), dups


# -- decode folders ---------------------------------------------------------------------------------------
def decode_shard_root(out: Path) -> Path:
    return out / "shards"


def decode_shard_dir(out: Path, shard: Shard) -> Path:
    return decode_shard_root(out) / shard.name


def read_records(folder: Path, repair: bool = False) -> list[SampleRecord]:
    """The records of a decode folder's manifest (none when it has no manifest yet); a last line cut by
    a kill is dropped (and cut from the file when ``repair``), any other bad line is an InputError."""
    return Manifest.read(folder / MANIFEST, repair=repair, missing_ok=True).records


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
    return ([out] if (out / MANIFEST).is_file() else []) + shards


def _row_index(path: Path) -> dict[str, dict[str, tuple[np.ndarray, str, int]]]:
    """features.h5 of a decode folder: group -> image path -> (row, sha256, label)."""
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    with FeatureStore(path, "r") as st:
        for name in st.group_names():
            g = st.group(name)
            feats, labels = g.rows(slice(None)), g._g["labels"][:]
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
        for name, by_path in _row_index(src / "features.h5").items():
            merged = rows.setdefault(name, {})
            for p, v in by_path.items():
                merged.setdefault(p, v)
        if (src / "features.h5").is_file():
            for name, a in _group_attrs(src / "features.h5").items():
                attrs.setdefault(name, a)
    tmp_h5 = out / "features.h5.merging"
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
        os.replace(tmp_h5, out / "features.h5")
    Manifest(out / MANIFEST).write(records)


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
    with contextlib.nullcontext() if locked else ProbeLock(out, lock_file=out / ".probe.lock"):
        # refuse while a shard is still being written
        locks = [ProbeLock(s, lock_file=s / ".probe.lock").acquire() for s in shard_dirs]
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
                        s = inside(src, rel, key, where=src / MANIFEST)  # never "../../x" or "/etc/x"
                        d = inside(out, rel, key, where=src / MANIFEST)
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
            if (src / "baseline").is_dir():
                for f in sorted((src / "baseline").glob("*.png")):
                    if f.is_symlink():  # a link would carry an outside file into the run
                        continue
                    if not (out / "baseline" / f.name).is_file():
                        (out / "baseline").mkdir(parents=True, exist_ok=True)
                        os.replace(f, out / "baseline" / f.name)
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


def sheet_from_records(out: Path, records: list[SampleRecord]) -> Path | None:
    """The contact sheet a single-process run draws, rebuilt from the manifest alone."""
    from probe.decoding import write_contact_sheet
    from probe.targets import Target

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
