"""The extract workflow: images (or CLIP prompts) -> features (``probe.extract``, ``probe extract``).

The batched, resumable extraction into an HDF5 store lives in :mod:`probe.extraction`; this module finds
the inputs, checks there is something to do, and (for a notebook) hands the features back as arrays.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.errors import InputError, UsageError
from probe.extraction import ExtractConfig, ExtractSummary, extract_images, extract_text
from probe.images import DEFAULT_MAX_PIXELS, collect_inputs
from probe.store import FeatureStore, group_key
from probe.workflows.common import Note, resolve_encoder


@dataclass
class ExtractResult:
    """What was stored where; ``features`` (layer -> [N, D]) holds the rows of this run's inputs in input
    order when the store was temporary or the inputs were a tensor."""

    store: Path | None
    paths: list[Path]
    prompts: list[str]
    summaries: list[ExtractSummary] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.summaries)

    def to_dict(self) -> dict[str, Any] | list[dict[str, Any]]:
        report = [s.to_dict() for s in self.summaries]
        return report if len(report) != 1 else report[0]


def default_workers() -> int:
    return min(4, max(0, (torch.get_num_threads() or 1) - 1))


def run(encoder: Any, inputs: Sequence[str | Path] | str | Path | torch.Tensor = (), *, out: str | Path | None = None,
        list_file: str | None = None, texts: Sequence[str] = (), batch_size: int = 32, workers: int | None = None,
        dtype: str = "float32", labels: str | None = None, overwrite: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS, on_start: Callable[[Any, int, int], None] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        on_warning: Note | None = None) -> ExtractResult:
    """Extract the features of ``inputs`` (files, folders, globs; or an image tensor [N, C, H, W] in [0, 1])
    and of ``texts`` (CLIP prompts) with ``encoder`` (a spec, a module or an Encoder).

    With ``out`` the features go into that HDF5 store (created or resumed: images already stored are
    skipped by content hash). Without it they come back in ``result.features``. ``labels="parent"`` stores
    each image's folder name as its label; images over ``max_pixels`` are skipped with a warning (None: no
    limit). ``on_start(encoder, n_images, n_prompts)`` is called once the
    work is known.
    """
    enc = resolve_encoder(encoder)
    if isinstance(inputs, torch.Tensor):
        with torch.no_grad():
            feats = enc.features(inputs.to(enc.device))
        return ExtractResult(None, [], [], features={k: v.float().cpu().numpy() for k, v in feats.items()})
    items = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(p) for p in inputs]
    prompts = [p.strip() for p in texts if p.strip()]
    if not items and not list_file and not prompts:
        raise UsageError("give images (files, folders, globs), --list FILE, or --text PROMPT")
    paths = collect_inputs(items, list_file) if (items or list_file) else []
    if (items or list_file) and not paths:
        raise InputError("no image files found in " + ", ".join(items or [str(list_file)]))
    config = ExtractConfig(batch_size=batch_size, workers=default_workers() if workers is None else workers,
                           dtype=dtype, overwrite=overwrite, labels=labels, max_pixels=max_pixels)
    if on_start:
        on_start(enc, len(paths), len(prompts))
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        store = Path(out) if out is not None else Path(tmp) / "features.h5"
        result = ExtractResult(Path(out) if out is not None else None, paths, prompts)
        if paths:
            result.summaries.append(extract_images(enc, paths, store, config, on_batch=on_batch,
                                                   on_warning=on_warning))
        if prompts and not result.interrupted:
            result.summaries.append(extract_text(enc, prompts, store, config))
        if not result.interrupted and not any(s.stored or s.skipped for s in result.summaries):
            raise InputError(f"nothing extracted: all {len(paths)} inputs failed")
        if out is None:
            result.features = _read_back(store, enc, paths, prompts)
    return result


def _read_back(store: Path, encoder, paths: Sequence[Path], prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each layer's rows for ``paths`` (in that order; failed files left out), and ``text`` for prompts."""
    out: dict[str, np.ndarray] = {}
    with FeatureStore(store, "r") as st:
        for layer in encoder.layers if paths else []:
            g = st.group(group_key(encoder.spec, layer))
            index = {p: i for i, p in enumerate(g.paths)}
            rows = [index[str(p)] for p in paths if str(p) in index]
            out[layer] = g.rows(rows) if rows else np.zeros((0, g.dim), np.float32)
        if prompts:
            g = st.group(group_key(encoder.spec, "text"))
            index = {p: i for i, p in enumerate(g.paths)}
            out["text"] = g.rows([index[f"text:{p}"] for p in dict.fromkeys(prompts)])
    return out
