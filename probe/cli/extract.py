"""``probe extract``: images (or CLIP text prompts) -> features in an HDF5 store."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from probe.cli.console import console, emit_json, progress, say, warn
from probe.cli.options import encoder_options, load_encoder_from_options
from probe.errors import InputError, UsageError
from probe.extraction import ExtractConfig, extract_images, extract_text
from probe.images import DEFAULT_MAX_PIXELS, collect_inputs


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("-o", "--out", "store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 feature store to create or append to.")
@encoder_options(multiple_layers=True)
@click.option("--list", "list_file", help="File with one input per line ('-' reads stdin).")
@click.option("--text", "texts", multiple=True, help="A text prompt to encode (CLIP models); repeatable.")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False), help="Prompts, one per line.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--workers", default=None, type=int, help="Reader processes [default: min(4, cores - 1)].")
@click.option("--float16", "half", is_flag=True, help="Store features as float16 (half the size).")
@click.option("--labels", type=click.Choice(["parent"]), help="Store each image's parent folder as its label.")
@click.option("--overwrite", is_flag=True, help="Replace the group(s) instead of resuming.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Skip (with a warning) images with more pixels than this, e.g. decompression bombs; 0 = no limit.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def extract(inputs, store, list_file, texts, text_file, batch_size, workers, half, labels, overwrite, max_pixels,
            as_json, enc_opts) -> None:
    """Extract features of INPUTS (files, folders, globs) into an HDF5 store.

    A rerun skips images already stored (by content hash), so an interrupted run resumes.
    """
    prompts = list(texts) + (Path(text_file).read_text().splitlines() if text_file else [])
    prompts = [p.strip() for p in prompts if p.strip()]
    if not inputs and not list_file and not prompts:
        raise UsageError("give images (files, folders, globs), --list FILE, or --text PROMPT")
    paths = collect_inputs(inputs, list_file) if (inputs or list_file) else []
    if (inputs or list_file) and not paths:
        raise InputError("no image files found in " + ", ".join(inputs or [list_file]))
    if workers is None:
        workers = min(4, max(0, (torch.get_num_threads() or 1) - 1))
    encoder = load_encoder_from_options(enc_opts)
    config = ExtractConfig(batch_size=batch_size, workers=workers, dtype="float16" if half else "float32",
                           overwrite=overwrite, labels=labels, max_pixels=max_pixels or None)
    say(f"[bold]{encoder.spec}[/] layers {', '.join(encoder.layers)} on {encoder.device}; "
        f"{len(paths)} images, {len(prompts)} prompts -> {store}")
    results = []
    if paths:
        with progress("extract", len(paths)) as update:
            summary = extract_images(encoder, paths, store, config, on_batch=lambda d, t: update(d), on_warning=warn)
        results.append(summary)
    if prompts:
        results.append(extract_text(encoder, prompts, store, config))
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
