"""The extract workflow: images (or CLIP prompts) -> features (``probe.extract``, ``probe extract``).

The batched, resumable extraction into an HDF5 store lives in :mod:`.pipeline`, the merge of a run split into
shards (``shard=``, or the ranks of torchrun: :mod:`probe.workflows.parts`) in :mod:`.merge`. This module
gathers the inputs (files, folders, globs, list files, webdataset tars, parquet files: :mod:`probe.sources`),
checks there is something to do, and (for a notebook) hands the features back as arrays. ``probe extract``
only parses options into this ``run`` and prints what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.distributed import Runtime, Shard, runtime, take
from probe.errors import InputError, UsageError
from probe.images import DEFAULT_MAX_PIXELS
from probe.models.encoder import Encoder
from probe.sources import Item, collect_sources, item_key
from probe.store import FeatureStore, group_key
from probe.workflows.common import Note, asked_device, load_on, output_dir, resolve_encoder
from probe.workflows.extract.merge import merge_stores, store_shard_dir, store_shard_path
from probe.workflows.extract.pipeline import ExtractConfig, ExtractSummary, extract_images, extract_text
from probe.workflows.parts import MergeSummary, check_shardable, run_part


@dataclass(frozen=True)
class ExtractPlan:
    """What this process is about to do, handed to ``on_start`` once the encoder is loaded."""

    encoder: Encoder
    images: int  # images this process reads: all of them, or its shard's batches
    prompts: int  # prompts given (counted by shard 0 only: they are encoded once, into the main store)
    store: Path | None  # the store the run fills; None: a temporary one
    shard: Shard = Shard()
    shard_store: Path | None = None  # where a shard's rows go until the merge (STORE.shards/i-of-N.h5)
    torchrun: bool = False  # the shards are torchrun's ranks, which wait for each other; rank 0 merges

    @property
    def speaks(self) -> bool:
        """False on torchrun ranks other than 0: rank 0 speaks for the whole run."""
        return not self.torchrun or self.shard.index == 0


@dataclass
class ExtractResult:
    """What was stored where; ``features`` (layer -> [N, D]) holds the rows of this run's inputs in input
    order when the store was temporary or the inputs were a tensor. After a torchrun merge, rank 0's
    ``summaries`` describe the merged run (rows the merge added) and ``merged`` the merge itself."""

    store: Path | None
    paths: list[Item]
    prompts: list[str]
    summaries: list[ExtractSummary] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    plan: ExtractPlan | None = None
    merged: MergeSummary | None = None

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.summaries)

    @property
    def awaits_merge(self) -> bool:
        """A finished ``shard=`` part: its rows wait in ``plan.shard_store`` until every part is merged."""
        p = self.plan
        return p is not None and not p.shard.single and not p.torchrun and not self.interrupted

    @property
    def has_report(self) -> bool:
        """Whether this process reports the run: not a torchrun rank other than 0 (rank 0 reports the merged
        run), nor a shard that owned no batch; an interrupted part always reports (rerun it to resume)."""
        p = self.plan
        if p is None or p.shard.single or self.interrupted:
            return True
        return p.shard.index == 0 if p.torchrun else p.images > 0

    def to_dict(self) -> dict[str, Any] | list[dict[str, Any]]:
        report = [s.to_dict() for s in self.summaries]
        return report if len(report) != 1 else report[0]


class NothingExtracted(InputError):
    """Every input failed. ``result`` still lists each failure (``probe extract`` prints it, then the error)."""

    def __init__(self, result: ExtractResult):
        super().__init__(f"nothing extracted: all {len(result.paths)} inputs failed")
        self.result = result


def default_workers() -> int:
    return min(4, max(0, (torch.get_num_threads() or 1) - 1))


def run(encoder: Any, inputs: Sequence[str | Path] | str | Path | torch.Tensor = (), *, out: str | Path | None = None,
        list_file: str | None = None, texts: Sequence[str] = (), text_file: str | Path | None = None,
        batch_size: int = 32, workers: int | None = None, dtype: str = "float32", labels: str | None = None,
        overwrite: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, image_column: str | None = None,
        label_column: str | None = None, shard: Shard | str | None = None, device: str | None = None,
        on_start: Callable[[ExtractPlan], None] | None = None, on_batch: Callable[[int, int], None] | None = None,
        on_warning: Note | None = None) -> ExtractResult:
    """Extract the features of ``inputs`` and of the CLIP prompts ``texts`` (and ``text_file``'s lines)
    with ``encoder`` (a spec, a module, an Encoder or :class:`~probe.workflows.options.EncoderOptions`).

    ``inputs``: files, folders, globs, webdataset ``.tar`` shards and ``.parquet`` files (brace patterns
    such as ``shards/{00000..00009}.tar`` expand as in bash; ``image_column`` names the parquet column),
    plus ``list_file``'s lines (``-``: stdin); or an image tensor [N, C, H, W] in [0, 1].

    With ``out`` the features go into that HDF5 store (created or resumed: images already stored are
    skipped by content hash; ``overwrite`` replaces the groups instead). Without it they come back in
    ``result.features``. ``labels="parent"`` stores each image's folder name as its label; tar shards'
    ``key.cls`` / ``key.json`` (``label`` or ``cls`` field) and a parquet ``label`` column (or
    ``label_column``) give their rows' labels (a bad one: a warning, label -1); images over
    ``max_pixels`` are skipped with a warning (None or 0: no limit).

    ``shard`` (``"i/N"`` or a :class:`~probe.distributed.Shard`) extracts only that part into
    ``OUT.shards/`` (join the parts with ``probe merge OUT`` / :func:`probe.merge`). Under
    torchrun the ranks are the shards: each rank takes its own GPU (unless ``device`` or the encoder
    names one), all wait for each other and rank 0 merges. ``on_start(plan)`` is called once the work is
    known, ``on_batch(done, total)`` after each batch, ``on_warning(line)`` for each input that fails.
    """
    ExtractConfig(batch_size=batch_size, workers=workers or 0, dtype=dtype, labels=labels,
                  max_pixels=max_pixels or None)  # the API's values checked like the CLI's, before any load
    if isinstance(inputs, torch.Tensor):
        from probe.images import check_image_tensor

        check_image_tensor(inputs, "inputs")
        return _tensor_features(resolve_encoder(encoder, device=device), inputs)
    from probe.outputs import check_writable_file

    check_writable_file(out, "-o")
    prompts = _prompts(texts, text_file)
    paths = _gather(inputs, list_file, image_column, prompts, label_column)
    config = ExtractConfig(batch_size=batch_size, workers=default_workers() if workers is None else workers,
                           dtype=dtype, overwrite=overwrite, labels=labels, max_pixels=max_pixels or None)
    rt = runtime(shard, asked_device(encoder, device))
    try:
        if not rt.shard.single:
            check_shardable(out, "extract", "stores", "STORE")
            if overwrite:
                raise UsageError("--overwrite replaces groups of one store; with shards, delete STORE and "
                                 "STORE.shards/ instead")
        enc = load_on(encoder, device, rt)
        with output_dir(out, "features.h5") as store:
            plan = ExtractPlan(enc, len(take(paths, rt.shard, batch_size)), len(prompts) if rt.is_main else 0,
                               None if out is None else store, rt.shard,
                               None if rt.shard.single else store_shard_path(store, rt.shard), rt.group)
            if on_start:
                on_start(plan)
            result = ExtractResult(plan.store, paths, prompts, plan=plan)
            if rt.shard.single:
                _extract_whole(enc, paths, prompts, store, config, result, on_batch, on_warning)
            else:
                extract_part(rt, enc, paths, prompts, store, config, result, on_batch, on_warning)
            if result.has_report and not result.interrupted and not any(s.stored or s.skipped
                                                                        for s in result.summaries):
                raise NothingExtracted(result)
            if out is None:
                result.features = _read_back(store, enc, paths, prompts)
    finally:
        rt.close()
    return result


def _prompts(texts: Sequence[str], text_file: str | Path | None) -> list[str]:
    """The prompts, stripped, blank ones dropped: ``texts`` then ``text_file``'s lines (UTF-8)."""
    from_file: list[str] = []
    if text_file:
        try:
            from_file = Path(text_file).read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"{text_file}: not a UTF-8 text file of prompts (byte {exc.start})") from None
    return [p.strip() for p in [*texts, *from_file] if p.strip()]


def _gather(inputs: Sequence[str | Path] | str | Path, list_file: str | None, image_column: str | None,
            prompts: Sequence[str], label_column: str | None = None) -> list[Item]:
    """Every image input in order (containers opened into their images); refuses a run with nothing to do."""
    items = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(p) for p in inputs]
    if not items and not list_file and not prompts:
        raise UsageError("give images (files, folders, globs), --list FILE, or --text PROMPT")
    paths = collect_sources(items, list_file, image_column, label_column) if (items or list_file) else []
    if (items or list_file) and not paths:
        raise InputError("no image files found in " + ", ".join(items or [str(list_file)]))
    return paths


def _tensor_features(encoder: Encoder, images: torch.Tensor) -> ExtractResult:
    from probe.images import check_image_tensor

    images = check_image_tensor(images, "inputs")  # the rule decode's image targets obey
    images = images[None] if images.dim() == 3 else images
    with torch.no_grad():
        feats = encoder.features(images.to(encoder.device))
    return ExtractResult(None, [], [], features={k: v.float().cpu().numpy() for k, v in feats.items()})


def _extract_whole(encoder: Encoder, paths: Sequence[Item], prompts: Sequence[str], store: Path,
                   config: ExtractConfig, result: ExtractResult, on_batch: Callable[[int, int], None] | None,
                   on_warning: Note | None) -> None:
    """The run in one process: the images, then (unless interrupted) the prompts, into ``store``."""
    if paths:
        result.summaries.append(extract_images(encoder, paths, store, config, on_batch=on_batch,
                                               on_warning=on_warning))
    if prompts and not result.interrupted:
        result.summaries.append(extract_text(encoder, prompts, store, config))


def _read_back(store: Path, encoder, paths: Sequence[Item], prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each layer's rows for ``paths`` (in that order; failed inputs left out), and ``text`` for prompts."""
    out: dict[str, np.ndarray] = {}
    with FeatureStore(store, "r") as st:
        for layer in encoder.layers if paths else []:
            g = st.group(group_key(encoder.spec, layer))
            index = {p: i for i, p in enumerate(g.paths)}
            rows = [index[k] for k in map(item_key, paths) if k in index]
            out[layer] = g.rows(rows) if rows else np.zeros((0, g.dim), np.float32)
        if prompts:
            g = st.group(group_key(encoder.spec, "text"))
            index = {p: i for i, p in enumerate(g.paths)}
            out["text"] = g.rows([index[f"text:{p}"] for p in dict.fromkeys(prompts)])
    return out


def extract_part(rt: Runtime, encoder: Encoder, paths: Sequence[Item], prompts: Sequence[str], store: Path,
                 config: ExtractConfig, result: ExtractResult, on_batch: Callable[[int, int], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
    """Extract this process's shard into its shard store and add its summary to ``result``; under torchrun
    wait for every rank, then on rank 0 merge and encode ``prompts``: its summaries become the merged run's.

    An interrupted part keeps its finished batches (rerun to resume); a failed or interrupted torchrun rank
    stops the merge on every rank (InputError)."""

    def part() -> None:
        if paths:
            result.summaries.append(extract_images(encoder, paths, store_shard_path(store, rt.shard), config,
                                                   on_batch=on_batch, on_warning=on_warning, shard=rt.shard,
                                                   skip_stores=[store]))

    def failed() -> InputError:
        return InputError(f"{store}: a rank was interrupted or failed; finished batches are kept in "
                          f"{store_shard_dir(store)}; rerun the same command to resume")

    _, merges = run_part(rt, part, failed, finished=lambda _: not result.interrupted)
    if not merges:
        return
    result.merged = merge_stores(store)
    text = [extract_text(encoder, prompts, store, config)] if prompts else []
    result.summaries = [merged_total(result.summaries, result.merged), *text]


def merged_total(parts: Sequence[ExtractSummary], merged: MergeSummary) -> ExtractSummary:
    """Rank 0's report after a merge: the rows the merge added, this rank's failures and time."""
    out = ExtractSummary(groups=list(merged.added))
    out.stored = max(merged.added.values(), default=0)
    out.skipped = sum(s.skipped for s in parts) + merged.duplicates
    out.failed = [f for s in parts for f in s.failed]
    out.seconds = sum(s.seconds for s in parts)
    return out
