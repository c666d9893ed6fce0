"""``probe decode``: images whose features match a target, with the distance each one reached.

Thin layer: parse options (probe.cli.options) into probe.workflows.decode (``probe.decode``: targets,
shards, torchrun and the merge all live there), show progress and a result table (rich on stderr) or the
summary as JSON on stdout.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from probe.cli.console import LateProgress, emit_json, print_table, quiet, say, speak_only_if, warn
from probe.cli.options import decode_options
from probe.manifest import SampleRecord
from probe.naturalness import OFF_MANIFOLD
from probe.targets import Targets
from probe.workflows import decode as workflow
from probe.workflows.decode.pipeline import DecodeEvent, DecodeSummary


class DecodeProgress(LateProgress):
    """A workflow's ``on_event``: the plan as one line at 'start', then a bar counting guided evaluations
    (late-step rounds put most of the work in the last steps, so steps would mislead)."""

    def __init__(self, what: str = "decode"):
        super().__init__(what, unit="evals")

    def __call__(self, ev: DecodeEvent) -> None:
        if ev.phase == "start":
            p = ev.plan or {}
            say(f"{p['encoder']} [{'+'.join(p['layers'])}] <- {p['prior']} on {p['device']}: "
                f"{self.label}: {p['targets']} target(s) x {p['samples']} sample(s), schedule {p['schedule']} "
                f"({ev.n_steps} steps, {p['evaluations']} guided evaluations per sample) -> {p['out']}")
            self._work = list(itertools.accumulate(p["step_evaluations"]))
            self._n_steps, self._base, self._n_batches = ev.n_steps, p["baseline_batches"], ev.n_batches
            self._best = None
            self.start(self._base * ev.n_steps + ev.n_batches * self._work[-1])
        elif ev.phase == "baseline":  # an unguided step counted as one evaluation
            self.update((ev.batch - 1) * self._n_steps + ev.step, f"unguided baseline {ev.batch}/{ev.n_batches}")
        elif ev.phase == "pool":  # drawn once per prior and network, then cached
            if not getattr(self, "_pool_said", False):
                self._pool_said = True
                say(f"seed pool: {ev.n_steps} unguided samples of the prior, drawn (unless shipped) and run through "
                    "the network once, then cached")
            self.update(self._base * self._n_steps, f"seed pool {ev.step}/{ev.n_steps} unguided samples")
        else:  # the best distance so far over the run (monotone), not the latest call's
            finite = [d for d in ev.best if d == d and d != float("inf")]
            if finite:
                self._best = min(finite + ([self._best] if getattr(self, "_best", None) is not None else []))
            best = getattr(self, "_best", None)
            if ev.fraction is not None:  # the sampler's queue: one stream over all samples
                extra = f"{ev.samples_done}/{ev.samples_total} samples"
                done = self._base * self._n_steps + ev.fraction * self._n_batches * self._work[-1]
            else:
                extra = f"batch {ev.batch}/{ev.n_batches}"
                done = self._base * self._n_steps + (ev.batch - 1) * self._work[-1] + self._work[ev.step - 1]
            self.update(int(done), extra + (f" best d {best:.4g}" if best is not None else ""))


def print_result_table(summary: DecodeSummary, limit: int = 40) -> None:
    """The decoded samples with their distances (stderr, beside the progress; tab-separated when piped)."""
    rows = []
    for r in summary.records[:limit]:
        rel, nat = r.relative_distance, r.naturalness
        rows.append([r.target_id, r.sample, f"{r.best_distance:.4g}", "-" if rel is None else f"{rel:.3f}",
                     f"{r.cosine:.3f}", "-" if nat is None else f"{nat:.2f}" + (" OFF" if r.off_manifold else ""),
                     f"{r.best_step + 1}/{r.steps}", r.evaluations, f"{r.seconds:.2f}"])
    caption = (f"first {limit} of {len(summary.records)}; all in manifest.jsonl"
               if len(summary.records) > limit else None)
    print_table(f"decoded {len(summary.records)} samples -> {summary.out}",
                ["target", "s", "best d", "rel", "cos", "realism", "best step", "evals", "s/sample"], rows,
                err=True, caption=caption)


def show(summary: DecodeSummary) -> None:
    """The off-manifold warning (even with --quiet), then the result table."""
    warn_off_manifold(summary.records, OFF_MANIFOLD)
    if not quiet():
        print_result_table(summary)


def warn_off_manifold(records: list[SampleRecord], threshold: float) -> None:
    """One warning line when decodes look unlike the prior's own samples (probe.naturalness)."""
    flagged = [r for r in records if r.off_manifold]
    if flagged:
        names = ", ".join(r.image for r in flagged[:3]) + (", ..." if len(flagged) > 3 else "")
        warn(f"{len(flagged)} of {len(records)} decoded images look off the prior's manifold (realism score > "
             f"{threshold:g} x its unguided samples'): {names}. Their attributes say little about the feature; "
             f"try a lower --weight or more --eot-shift.")


@click.command()
@click.option("--from", "store", type=click.Path(dir_okay=False, path_type=Path),
              help="Feature store (HDF5) holding the target rows.")
@click.option("--group", help="Group of the store [default: the encoder's group, or the only one].")
@click.option("--index", help="Rows of the store: 3, 0:16, 3,5,7.")
@click.option("--path", "paths", multiple=True, help="Row of the store by its stored image path; repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="An image whose feature is the target; repeatable.")
@click.option("--text", "texts", multiple=True, help="A text prompt as target (CLIP encoders); repeatable.")
@click.option("--vector", "vectors", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A raw vector file (.npy [D] or [N, D]; .txt one vector per line); repeatable.")
@decode_options(samples=4, trajectory=True,
                out_help="Output folder (images/, final/, baseline/, manifest.jsonl, features.h5, contact sheet).")
@click.option("--shard", help="Decode only shard i of N (i/N, e.g. 0/4) into OUT/shards/; join with 'probe merge OUT'. "
              "Under torchrun the ranks are the shards and rank 0 merges.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and all records as JSON on stdout.")
def decode(store, group, index, paths, images, texts, vectors, prior, encoder, decode, out, shard, as_json) -> None:
    """Decode target features into images with a guided diffusion prior (arXiv 2509.07936).

    Each target is decoded SAMPLES times; every image is saved with the squared feature distance it
    reached, relative to an unguided sample of the same seed. Targets: store rows (--from F.h5
    --index 0:8), images (--image), CLIP prompts (--text) or raw vectors (--vector). With --from and
    no --model, the encoder is the one that made the store.

    A rerun of the same command into the same OUT resumes it (finished samples are kept); other
    settings are refused. OUT is locked while a decode writes it.
    """
    targets = Targets(store=store, group=group, index=index, paths=paths, images=images, texts=texts,
                      vectors=vectors)
    with DecodeProgress() as on_event:
        result = workflow.run(encoder, targets, prior=prior, out=out, options=decode, shard=shard,
                              on_start=lambda plan: speak_only_if(plan.speaks), on_event=on_event,
                              on_warning=warn)
    plan = result.plan
    if result.merged is not None:
        say(f"merged {plan.shard.count} shards into {out} ({result.merged.seconds:.1f} s)")
    if result.awaits_merge:
        say(f"shard {plan.shard} done: {len(result.records)} samples in {plan.shard_dir}; "
            f"run 'probe merge {out}' once all {plan.shard.count} shards are done")
    if not result.has_report:
        return
    summary = result.summary
    if as_json:
        emit_json(summary.to_dict())
    show(summary)
    say(f"best images in {out / 'images'}, contact sheet {out / 'contact_sheet.png'}, "
        f"records in {out / 'manifest.jsonl'} ({summary.seconds:.1f} s)")
