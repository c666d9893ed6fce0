"""``probe extract``: images (or CLIP text prompts) -> features in an HDF5 store. The single-process run is
probe.workflows.extract (``probe.extract``); the --shard and torchrun paths (split, lock, merge) live here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click
import torch

from probe.cli.console import console, emit_json, progress, say, warn
from probe.cli.options import encoder_options
from probe.distributed import Runtime, runtime, take
from probe.errors import InputError, UsageError
from probe.extraction import ExtractConfig, ExtractSummary, extract_images, extract_text
from probe.images import DEFAULT_MAX_PIXELS
from probe.merging import merge_stores, store_shard_dir, store_shard_path
from probe.sources import collect_sources
from probe.workflows.options import EncoderOptions


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("-o", "--out", "store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 feature store to create or append to.")
@encoder_options()
@click.option("--list", "list_file", help="File with one input per line ('-' reads stdin).")
@click.option("--text", "texts", multiple=True, help="A text prompt to encode (CLIP models); repeatable.")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False), help="Prompts, one per line.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Reader processes [default: min(4, cores - 1)].")
@click.option("--float16", "half", is_flag=True, help="Store features as float16 (half the size).")
@click.option("--labels", type=click.Choice(["parent"]), help="Store each image's parent folder as its label.")
@click.option("--overwrite", is_flag=True, help="Replace the group(s) instead of resuming.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Skip (with a warning) images with more pixels than this, e.g. decompression bombs; 0 = no limit.")
@click.option("--image-column", help="Parquet column holding the encoded images [default: jpg, png, image, ...].")
@click.option("--shard", help="Extract only shard i of N (i/N) into STORE.shards/; join with 'probe merge STORE'. "
              "Under torchrun the ranks are the shards and rank 0 merges.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def extract(inputs, store, list_file, texts, text_file, batch_size, workers, half, labels, overwrite, max_pixels,
            image_column, shard, as_json, encoder) -> None:
    """Extract features of INPUTS (files, folders, globs, webdataset .tar shards, parquet files; brace
    patterns like shards/{00000..00009}.tar) into an HDF5 store.

    A rerun skips images already stored (by content hash), so an interrupted run resumes.
    """
    from probe.outputs import check_writable_file

    check_writable_file(store, "-o")
    file_prompts: list[str] = []
    if text_file:
        try:
            file_prompts = Path(text_file).read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"{text_file}: not a UTF-8 text file of prompts (byte {exc.start})") from None
    prompts = list(texts) + file_prompts
    prompts = [p.strip() for p in prompts if p.strip()]
    if not inputs and not list_file and not prompts:
        raise UsageError("give images (files, folders, globs), --list FILE, or --text PROMPT")
    paths = collect_sources(inputs, list_file, image_column) if (inputs or list_file) else []
    if (inputs or list_file) and not paths:
        raise InputError("no image files found in " + ", ".join(inputs or [list_file]))
    if workers is None:
        workers = min(4, max(0, (torch.get_num_threads() or 1) - 1))
    rt = runtime(shard, encoder.device)
    try:
        config = ExtractConfig(batch_size=batch_size, workers=workers, dtype="float16" if half else "float32",
                               overwrite=overwrite, labels=labels, max_pixels=max_pixels or None)
        results = _extract_shard(rt, paths, prompts, store, config, encoder)
    finally:
        rt.close()
    if results is None:
        return
    report = [s.to_dict() for s in results]
    if as_json:
        emit_json(report if len(report) > 1 else report[0])
    for s in results:
        say(f"stored {s.stored}, skipped {s.skipped} already stored, failed {len(s.failed)} "
            f"({s.images_per_second:.1f}/s) in {', '.join(s.groups)}")
    if any(s.interrupted for s in results):
        console().print("interrupted: every finished batch is kept; rerun the same command to resume")
        sys.exit(130)
    if not any(s.stored or s.skipped for s in results):
        raise InputError(f"nothing extracted: all {len(paths)} inputs failed")


def _extract_shard(rt: Runtime, paths, prompts, store: Path, config: ExtractConfig,
                   options: EncoderOptions) -> list | None:
    """This process's part: the whole job, one --shard, or one torchrun rank (rank 0 merges at the end)."""
    if rt.group and not rt.is_main:
        click.get_current_context().find_root().obj["quiet"] = True  # rank 0 speaks for the run
    encoder = dataclasses.replace(options, device=rt.device(options.device)).load()
    batch_size, overwrite = config.batch_size, config.overwrite
    target = store if rt.shard.single else store_shard_path(store, rt.shard)
    part = "" if rt.shard.single else f" (shard {rt.shard}: {target})"
    n_mine = len(take(paths, rt.shard, batch_size))
    say(f"{encoder.spec} layers {', '.join(encoder.layers)} on {encoder.device}; "
        f"{n_mine} images, {len(prompts) if rt.is_main else 0} prompts -> {store}{part}")
    if overwrite and not rt.shard.single:
        raise UsageError("--overwrite replaces groups of one store; with shards, delete STORE and STORE.shards/ "
                         "instead")
    results = []
    ok = False
    try:
        if paths:
            with progress("extract", n_mine) as update:
                results.append(extract_images(encoder, paths, target, config, on_batch=lambda d, t: update(d),
                                              on_warning=warn, shard=rt.shard,
                                              skip_stores=[] if rt.shard.single else [store]))
        if prompts and rt.shard.single:
            results.append(extract_text(encoder, prompts, target, config))
        ok = not any(s.interrupted for s in results)
    finally:
        all_ok = rt.all_ok(ok) if not rt.shard.single else ok
    if not rt.shard.single:
        if any(s.interrupted for s in results):
            return results  # exit 130: rerun the same command to resume
        if not rt.group:
            say(f"shard {rt.shard} done in {target}; run 'probe merge {store}' once all {rt.shard.count} "
                "shards are done" + (" (then extract the --text prompts)" if prompts else ""))
            return results if n_mine else None
        if not all_ok:
            raise InputError(f"{store}: a rank was interrupted or failed; finished batches are kept in "
                             f"{store_shard_dir(store)}; rerun the same command to resume")
        if not rt.is_main:
            return None
        merged = merge_stores(store)
        say(f"merged {len(merged.shards)} shards into {store}: " + ", ".join(
            f"{n} +{k}" for n, k in merged.added.items()))
        if prompts:
            results.append(extract_text(encoder, prompts, store, config))
        return [_total(results, rt.shard, merged)] + [s for s in results if s.groups and "text" in s.groups[0]]
    return results


def _total(results, shard, merged) -> ExtractSummary:
    """Rank 0's report after a merge: rows added by the merge, this rank's failures and time."""
    image = [s for s in results if s.groups and not s.groups[0].endswith("/text")]
    out = ExtractSummary(groups=list(merged.added))
    out.stored = max(merged.added.values(), default=0)
    out.skipped = sum(s.skipped for s in image) + merged.duplicates
    out.failed = [f for s in image for f in s.failed]
    out.seconds = sum(s.seconds for s in image)
    return out
