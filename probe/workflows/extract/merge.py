"""Joining the shard stores of a split extract into the store a single process would have written.

Shard i of N writes ``STORE.shards/000ii-of-000NN.h5``, whose rows carry their position in the input list
(``input_index``). ``merge_stores`` appends every shard's rows to STORE sorted by that position, keeping the
first row of each content hash (and none already in STORE), then deletes the shards. It is idempotent: a
merge killed half-way is rerun and appends only what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probe.distributed import Shard
from probe.errors import InputError, UsageError
from probe.locking import ProbeLock
from probe.store import FeatureStore, record_mismatch
from probe.workflows.parts import NOT_RECORD, MergeSummary

CHUNK = 4096


# -- feature stores ---------------------------------------------------------------------------------------
def store_shard_dir(store: Path) -> Path:
    return store.with_name(store.name + ".shards")


def store_shard_path(store: Path, shard: Shard) -> Path:
    return store_shard_dir(store) / f"{shard.name}.h5"


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
        from probe.workflows.extract.pipeline import merge_label_names

        for names in label_names:
            merged_names = merge_label_names(out, names or [])
    paths = [g.paths for g in groups]
    labels = [g.raw_labels for g in groups]
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
