"""Images -> features of one model, for several layers in one pass, appended to a FeatureStore.

Worker processes read, hash and resize each file; the main process normalises, runs the network and
appends one batch at a time, flushing the file after each, so nothing finished is lost on interrupt.
Files whose content hash is already in every target group are skipped before decoding: reruns resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probe.distributed import Shard
from probe.errors import InputError, UsageError
from probe.images import DEFAULT_MAX_PIXELS, path_text, read_image01, sha256_text
from probe.models.encoder import Encoder
from probe.sources import Item, decode_item, item_key, quiet_worker, read_item
from probe.store import FeatureStore, check_dtype, existing_hashes, group_key


@dataclass
class ExtractConfig:
    batch_size: int = 32
    workers: int = 0
    dtype: str = "float32"
    overwrite: bool = False
    labels: str | None = None  # "parent": the parent folder's name is the label (tar/parquet bring theirs)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger images are skipped with a warning (0/None: no limit)

    def __post_init__(self) -> None:  # the API's values obey the CLI's rules (issue 22)
        check_dtype(self.dtype)
        if self.batch_size < 1 or self.workers < 0 or (self.max_pixels or 0) < 0:
            raise UsageError("batch_size must be >= 1, workers and max_pixels >= 0")
        if self.labels not in (None, "parent"):
            raise UsageError(f"labels must be None or 'parent', not {self.labels!r}")


@dataclass
class ExtractSummary:
    groups: list[str]
    stored: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"groups": self.groups, "stored": self.stored, "skipped": self.skipped,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2), "interrupted": self.interrupted}


class _ImageFiles(Dataset):
    """Each item: (resized tensor or None, recorded path, sha256, error or None, input position)."""

    def __init__(self, items: Sequence[Item], positions: Sequence[int], encoder: Encoder, skip: set[str],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.items = items
        self.positions = list(positions)
        self.preprocess = encoder.preprocess
        self.skip = skip
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        item = self.items[pos]
        key = item_key(item)  # storable text whatever bytes a file name has
        try:
            data, digest = read_item(item)
        except OSError as exc:
            return None, key, "", f"cannot read file ({exc.strerror or exc})", pos
        if digest in self.skip:
            return None, key, digest, None, pos
        try:
            image = (read_image01(item, self.max_pixels) if data is None
                     else decode_item(item, data, self.max_pixels))
            x = self.preprocess.resize(image[None])[0]
        except InputError as exc:
            return None, key, digest, str(exc).removeprefix(key + ": "), pos
        return x, key, digest, None, pos


def _collate(items):
    return items


def label_names_for(paths: Sequence[Item]) -> list[str]:
    if any(not isinstance(p, Path) for p in paths):
        raise UsageError("--labels parent needs image files in folders, not tar or parquet inputs")
    return sorted({Path(path_text(p)).parent.name for p in paths})


def _item_labels(items: Sequence[Item], good: Sequence[tuple], on_warning: Callable[[str], None] | None
                 ) -> list[int] | None:
    """The labels tar and parquet items carry (``.cls``/``.json`` members, a label column), -1 where none;
    a label that could not be used is a warning (the row is stored, label -1). None when no row has one."""
    labels = []
    for _, key, _, pos in good:
        item = items[pos]
        problem = getattr(item, "label_problem", "")
        if problem and on_warning:
            on_warning(f"{key}: {problem}; label stored as -1")
        labels.append(getattr(item, "label", -1))
    return labels if any(v >= 0 for v in labels) else None


def merge_label_names(group, names: Sequence[str]) -> list[str]:
    """The group's label names: those already stored keep their index (a resumed or extended run must not
    renumber rows written before), new folder names are appended."""
    old = group.attrs.get("label_names") or []
    merged = list(old) + [n for n in names if n not in old]
    group.set_attr("label_names", merged)
    return merged


def extract_images(encoder: Encoder, paths: Sequence[Item], store_path: Path, config: ExtractConfig,
                   on_batch: Callable[[int, int], None] | None = None,
                   on_warning: Callable[[str], None] | None = None,
                   shard: Shard | None = None, skip_stores: Sequence[Path] = ()) -> ExtractSummary:
    """Extract every layer of ``encoder`` for ``paths`` (files or container items) into ``store_path``.

    ``on_batch(done, total)`` reports progress; ``on_warning(line)`` gets one line per bad file.
    With ``shard`` (i/N, N > 1) only that shard's batches of the single-process batch grid are read, and
    ``store_path`` is the shard's own store, whose rows carry their input position (``input_index``) so
    ``probe merge`` restores the single-process order; hashes already in ``skip_stores`` (the main store)
    are skipped as well. Each content hash is stored once: the first occurrence in input order.
    """
    shard = shard or Shard()
    names = [group_key(encoder.spec, layer) for layer in encoder.layers]
    summary = ExtractSummary(groups=names)
    label_names = label_names_for(paths) if config.labels == "parent" else None
    store = FeatureStore(store_path, "a")  # locks the store: a second writer is refused before any work
    if config.overwrite:
        skip: set[str] = set()
    else:
        have = store.hashes_of(names)
        skip = set.intersection(*have.values()) if have else set()
        for path in skip_stores:  # a shard also skips what the main store holds
            have = existing_hashes(path, names)
            skip |= set.intersection(*have.values()) if have else set()
    positions = [i for batch in shard.batches(len(paths), config.batch_size) for i in batch]
    loader = DataLoader(_ImageFiles(paths, positions, encoder, skip, config.max_pixels), batch_size=config.batch_size,
                        num_workers=config.workers, collate_fn=_collate, worker_init_fn=quiet_worker,
                        persistent_workers=False, prefetch_factor=4 if config.workers else None)
    start = time.perf_counter()
    done = 0
    with store:
        groups = None
        first_overwrite = config.overwrite
        ctrl_c = _CtrlC()
        try:
            for batch in loader:
                if ctrl_c.seen:  # a Ctrl-C raised where Python drops exceptions (a weakref callback)
                    raise KeyboardInterrupt
                good, seen = [], set()
                for x, p, h, err, pos in batch:
                    if err is not None:
                        summary.failed.append((p, err))
                        if on_warning:
                            on_warning(f"{p}: {err}")
                    elif h in skip or h in seen:  # stored before, or a copy earlier in this batch
                        summary.skipped += 1
                    else:
                        seen.add(h)
                        good.append((x, p, h, pos))
                if good:
                    with torch.inference_mode():
                        feats = encoder.forward_resized(torch.stack([g[0] for g in good]))
                    if groups is None:
                        groups = [store.create_group(n, feats[layer].shape[1], encoder.record(), layer,
                                                     dtype=config.dtype, overwrite=first_overwrite,
                                                     feature_shape=encoder.layer_shapes.get(layer),
                                                     ordered=not shard.single)
                                  for n, layer in zip(names, encoder.layers)]
                        if label_names is not None:
                            group_labels = [merge_label_names(g, label_names) for g in groups]
                    found = None if label_names is not None else _item_labels(paths, good, on_warning)
                    for i, (g, layer) in enumerate(zip(groups, encoder.layers)):
                        labels = ([group_labels[i].index(Path(p).parent.name) for _, p, _, _ in good]
                                  if label_names is not None else found)
                        g.append(feats[layer].float().cpu().numpy(), [p for _, p, _, _ in good],
                                 [h for _, _, h, _ in good], labels,
                                 input_index=None if shard.single else [pos for *_, pos in good])
                    store.flush()
                    skip.update(h for _, _, h, _ in good)
                    summary.stored += len(good)
                done += len(batch)
                if on_batch:
                    on_batch(done, len(positions))
        except KeyboardInterrupt:
            summary.interrupted = True
        except RuntimeError:  # "DataLoader worker exited unexpectedly": a worker hit by the same Ctrl-C
            if not ctrl_c.seen:
                raise
            summary.interrupted = True
        finally:
            ctrl_c.restore()
        summary.interrupted = summary.interrupted or ctrl_c.seen
    summary.seconds = time.perf_counter() - start
    return summary


class _CtrlC:
    """Notes a SIGINT (then raises KeyboardInterrupt as Python's default handler does), so a loader error
    that the same Ctrl-C caused in a worker is told from a real one, and a KeyboardInterrupt that Python
    drops (raised in a weakref callback or ``__del__``: "Exception ignored in ...") still stops the run,
    quietly. A no-op outside the main thread."""

    def __init__(self) -> None:
        import signal
        import sys
        import threading

        self.seen = False
        self._old = None
        self._old_hook = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handle)
            self._old_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def _unraisable(self, info) -> None:
        if not (self.seen and isinstance(info.exc_value, KeyboardInterrupt)):
            self._old_hook(info)

    def restore(self) -> None:
        if self._old is not None:
            import signal
            import sys

            signal.signal(signal.SIGINT, self._old)
            sys.unraisablehook = self._old_hook
            self._old = None


def extract_text(encoder: Encoder, prompts: Sequence[str], store_path: Path, config: ExtractConfig) -> ExtractSummary:
    """CLIP text embeddings, stored like image features in group ``<model>/text``."""
    name = group_key(encoder.spec, "text")
    summary = ExtractSummary(groups=[name])
    store = FeatureStore(store_path, "a")
    have = set() if config.overwrite else store.hashes_of([name])[name]
    todo = [(p, sha256_text(p)) for p in dict.fromkeys(prompts)]
    summary.skipped = sum(h in have for _, h in todo)
    todo = [(p, h) for p, h in todo if h not in have]
    start = time.perf_counter()
    with store:
        group = None
        for i in range(0, len(todo), config.batch_size):
            chunk = todo[i:i + config.batch_size]
            with torch.inference_mode():
                feats = encoder.encode_text([p for p, _ in chunk]).float().cpu().numpy()
            if group is None:
                group = store.create_group(name, feats.shape[1], encoder.record(), "text", kind="text",
                                           dtype=config.dtype, overwrite=config.overwrite)
            group.append(feats, [f"text:{p}" for p, _ in chunk], [h for _, h in chunk])
            store.flush()
            summary.stored += len(chunk)
    summary.seconds = time.perf_counter() - start
    return summary


def export_group(store_path: Path, group: str | None, out: Path) -> dict:
    """Write a group's features to ``out`` (.npy) and its paths/labels beside it (.paths.txt, .labels.npy,
    and .label_names.txt: line k names label k, so the integer labels can be read without the store)."""
    from probe.outputs import check_writable_file

    for side in (out, *(out.with_suffix(x) for x in (".paths.txt", ".labels.npy", ".label_names.txt"))):
        check_writable_file(side, "-o")
    with FeatureStore(store_path, "r") as st:
        g = st.group(group)
        feats = g.rows(slice(None))
        paths, labels = g.paths, g.labels
        names = g.attrs.get("label_names")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats)
    out.with_suffix(".paths.txt").write_text("".join(p + "\n" for p in paths))
    written = [str(out), str(out.with_suffix(".paths.txt"))]
    if labels is not None:
        np.save(out.with_suffix(".labels.npy"), labels)
        written.append(str(out.with_suffix(".labels.npy")))
    if isinstance(names, list):
        out.with_suffix(".label_names.txt").write_text("".join(f"{n}\n" for n in names))
        written.append(str(out.with_suffix(".label_names.txt")))
    return {"group": g.name, "rows": int(feats.shape[0]), "dim": int(feats.shape[1]), "files": written}
