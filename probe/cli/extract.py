"""``probe extract``: images (or CLIP text prompts) -> features in an HDF5 store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from probe.cli.console import LateProgress, console, emit_json, say, warn
from probe.cli.options import encoder_options
from probe.images import DEFAULT_MAX_PIXELS
from probe.workflows import extract as workflow


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("-o", "--out", "store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 feature store to create or append to.")
@encoder_options()
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
def extract(inputs, store, encoder, list_file, texts, text_file, batch_size, workers, half, labels, overwrite,
            max_pixels, as_json) -> None:
    """Extract features of INPUTS (files, folders, globs) into an HDF5 store.

    A rerun skips images already stored (by content hash), so an interrupted run resumes.
    """
    prompts = list(texts) + (Path(text_file).read_text().splitlines() if text_file else [])
    with LateProgress("extract") as bar:
        def on_start(enc, n_images: int, n_prompts: int) -> None:
            say(f"[bold]{enc.spec}[/] layers {', '.join(enc.layers)} on {enc.device}; "
                f"{n_images} images, {n_prompts} prompts -> {store}")
            bar.start(n_images)

        result = workflow.run(encoder, inputs, out=store, list_file=list_file, texts=prompts, batch_size=batch_size,
                              workers=workers, dtype="float16" if half else "float32", labels=labels,
                              overwrite=overwrite, max_pixels=max_pixels or None, on_start=on_start,
                              on_batch=lambda done, _total: bar.update(done), on_warning=warn)
    if as_json:
        emit_json(result.to_dict())
    for s in result.summaries:
        say(f"stored {s.stored}, skipped {s.skipped} already stored, failed {len(s.failed)} "
            f"({s.images_per_second:.1f}/s) in {', '.join(s.groups)}")
    if result.interrupted:
        console().print("interrupted: every finished batch is kept; rerun the same command to resume")
        sys.exit(130)
