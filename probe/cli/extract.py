"""``probe extract``: images (or CLIP text prompts) -> features in an HDF5 store.

Thin layer: parse options, run probe.workflows.extract (``probe.extract``: inputs, shards, torchrun and the
merge all live there), show progress and the summary (rich on stderr) or the summary as JSON on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from probe.cli.console import LateProgress, console, emit_json, say, speak_only_if, warn
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
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Reader processes [default: min(4, cores - 1)].")
@click.option("--float16", "half", is_flag=True, help="Store features as float16 (half the size).")
@click.option("--labels", type=click.Choice(["parent"]), help="Store each image's parent folder as its label "
              "(tar shards' key.cls / key.json label and a parquet label column are stored without it).")
@click.option("--overwrite", is_flag=True, help="Replace the group(s) instead of resuming.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Skip (with a warning) images with more pixels than this, e.g. decompression bombs; 0 = no limit.")
@click.option("--image-column", help="Parquet column holding the encoded images [default: jpg, png, image, ...].")
@click.option("--label-column", help="Parquet column holding integer labels [default: label, when present].")
@click.option("--shard", help="Extract only shard i of N (i/N) into STORE.shards/; join with 'probe merge STORE'. "
              "Under torchrun the ranks are the shards and rank 0 merges.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def extract(inputs, store, list_file, texts, text_file, batch_size, workers, half, labels, overwrite, max_pixels,
            image_column, label_column, shard, as_json, encoder) -> None:
    """Extract features of INPUTS (files, folders, globs, webdataset .tar shards, parquet files; brace
    patterns like shards/{00000..00009}.tar) into an HDF5 store.

    A rerun skips images already stored (by content hash), so an interrupted run resumes.
    """
    bar = LateProgress("extract")

    def start(plan: workflow.ExtractPlan) -> None:
        speak_only_if(plan.speaks)
        part = f" (shard {plan.shard}: {plan.shard_store})" if plan.shard_store else ""
        say(f"{plan.encoder.spec} layers {', '.join(plan.encoder.layers)} on {plan.encoder.device}; "
            f"{plan.images} images, {plan.prompts} prompts -> {plan.store}{part}")
        if plan.images:
            bar.start(plan.images)

    try:
        with bar:
            result = workflow.run(encoder, inputs, out=store, list_file=list_file, texts=texts, text_file=text_file,
                                  batch_size=batch_size, workers=workers, dtype="float16" if half else "float32",
                                  labels=labels, overwrite=overwrite, max_pixels=max_pixels,
                                  image_column=image_column, label_column=label_column, shard=shard, on_start=start,
                                  on_batch=lambda done, _total: bar.update(done), on_warning=warn)
    except workflow.NothingExtracted as err:  # the summary says which inputs failed and why, then the error
        show(err.result, as_json)
        raise
    show(result, as_json)
    if result.interrupted:
        console().print("interrupted: every finished batch is kept; rerun the same command to resume")
        sys.exit(130)


def show(result: workflow.ExtractResult, as_json: bool) -> None:
    """The merge (torchrun rank 0), what a --shard part leaves to do, then the summary: JSON and one line each."""
    if result.merged:
        say(f"merged {len(result.merged.shards)} shards into {result.store}: " + ", ".join(
            f"{n} +{k}" for n, k in result.merged.added.items()))
    if result.awaits_merge:
        plan = result.plan
        say(f"shard {plan.shard} done in {plan.shard_store}; run 'probe merge {plan.store}' once all "
            f"{plan.shard.count} shards are done" + (" (then extract the --text prompts)" if result.prompts else ""))
    if not result.has_report:
        return
    if as_json:
        emit_json(result.to_dict())
    for s in result.summaries:
        say(f"stored {s.stored}, skipped {s.skipped} already stored, failed {len(s.failed)} "
            f"({s.images_per_second:.1f}/s) in {', '.join(s.groups)}")
