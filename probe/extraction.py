"""Images -> features of one model, for several layers in one pass, appended to a FeatureStore.

Worker processes read, hash and resize each file; the main process normalises, runs the network and
appends one batch at a time, flushing the file after each, so nothing finished is lost on interrupt.
Files whose content hash is already in every target group are skipped before decoding: reruns resume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probe.errors import InputError
from probe.images import DEFAULT_MAX_PIXELS, path_text, read_image01, sha256_file, sha256_text
from probe.models.encoder import Encoder
from probe.store import FeatureStore, group_key


@dataclass
class ExtractConfig:
    batch_size: int = 32
    workers: int = 0
    dtype: str = "float32"
    overwrite: bool = False
    labels: str | None = None  # "parent": the parent folder's name is the label
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger images are skipped with a warning (0/None: no limit)


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
    """Each item: (resized tensor or None, path, sha256, error or None)."""

    def __init__(self, paths: Sequence[Path], encoder: Encoder, skip: set[str],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.paths = list(paths)
        self.preprocess = encoder.preprocess
        self.skip = skip
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        name = path_text(path)  # storable text whatever bytes the file name has
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return None, name, "", f"cannot read file ({exc.strerror})"
        if digest in self.skip:
            return None, name, digest, None
        try:
            x = self.preprocess.resize(read_image01(path, self.max_pixels)[None])[0]
        except InputError as exc:
            return None, name, digest, str(exc).removeprefix(name + ": ")
        return x, name, digest, None


def _collate(items):
    return items


def label_names_for(paths: Sequence[Path]) -> list[str]:
    return sorted({Path(path_text(p)).parent.name for p in paths})


def _merge_label_names(group, names: Sequence[str]) -> list[str]:
    """The group's label names: those already stored keep their index (a resumed or extended run must not
    renumber rows written before), new folder names are appended."""
    old = group.attrs.get("label_names") or []
    merged = list(old) + [n for n in names if n not in old]
    group._g.attrs["label_names"] = json.dumps(merged)
    return merged


def extract_images(encoder: Encoder, paths: Sequence[Path], store_path: Path, config: ExtractConfig,
                   on_batch: Callable[[int, int], None] | None = None,
                   on_warning: Callable[[str], None] | None = None) -> ExtractSummary:
    """Extract every layer of ``encoder`` for ``paths`` into ``store_path``.

    ``on_batch(done, total)`` reports progress; ``on_warning(line)`` gets one line per bad file.
    """
    names = [group_key(encoder.spec, layer) for layer in encoder.layers]
    summary = ExtractSummary(groups=names)
    label_names = label_names_for(paths) if config.labels == "parent" else None
    store = FeatureStore(store_path, "a")  # locks the store: a second writer is refused before any work
    if config.overwrite:
        skip: set[str] = set()
    else:
        have = store.hashes_of(names)
        skip = set.intersection(*have.values()) if have else set()
    loader = DataLoader(_ImageFiles(paths, encoder, skip, config.max_pixels), batch_size=config.batch_size,
                        num_workers=config.workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if config.workers else None)
    start = time.perf_counter()
    done = 0
    with store:
        groups = None
        first_overwrite = config.overwrite
        try:
            for batch in loader:
                good = [(x, p, h) for x, p, h, err in batch if x is not None]
                for _, p, h, err in batch:
                    if err is not None:
                        summary.failed.append((p, err))
                        if on_warning:
                            on_warning(f"{p}: {err}")
                    elif h in skip:
                        summary.skipped += 1
                if good:
                    with torch.inference_mode():
                        feats = encoder.forward_resized(torch.stack([g[0] for g in good]))
                    if groups is None:
                        groups = [store.create_group(n, feats[layer].shape[1], encoder.record(), layer,
                                                     dtype=config.dtype, overwrite=first_overwrite,
                                                     feature_shape=encoder.layer_shapes.get(layer))
                                  for n, layer in zip(names, encoder.layers)]
                        if label_names is not None:
                            group_labels = [_merge_label_names(g, label_names) for g in groups]
                    for i, (g, layer) in enumerate(zip(groups, encoder.layers)):
                        labels = ([group_labels[i].index(Path(p).parent.name) for _, p, _ in good]
                                  if label_names is not None else None)
                        g.append(feats[layer].float().cpu().numpy(), [p for _, p, _ in good],
                                 [h for _, _, h in good], labels)
                    store.flush()
                    skip.update(h for _, _, h in good)
                    summary.stored += len(good)
                done += len(batch)
                if on_batch:
                    on_batch(done, len(paths))
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.seconds = time.perf_counter() - start
    return summary


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
