"""``probe decode``: images whose features match a target, with the distance each one reached.

Thin layer: parse options, resolve targets (probe.targets), run probe.decoding, show progress and a
result table (rich on stderr) or the summary as JSON on stdout.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import click
from rich.table import Table

from probe.cli.console import console, emit_json, progress, quiet, say, warn
from probe.cli.options import load_encoder_from_options
from probe.decoding import DecodeEvent, DecodeSettings, DecodeSummary, decode_targets
from probe.diffusion.priors import DEFAULT_PRIOR, load_prior
from probe.diffusion.schedules import DEFAULT_PRESET, PRESETS, preset
from probe.distributed import Runtime, Shard, runtime
from probe.errors import ProbeError
from probe.merging import merge_decodes
from probe.models.registry import DEFAULT_ENCODER
from probe.targets import resolve_targets

SCHEDULE_HELP = "; ".join(
    f"{name}: {c.steps} {'' if c.spacing == 'linear' else c.spacing + ' '}steps, K={c.rounds}"
    + (f" (K={c.early_rounds} on the first {c.early_steps})" if c.early_steps and not c.unguided else "")
    + (f" (K={c.late_rounds} on the last {c.late_steps})" if c.late_steps and c.late_rounds else "")
    + (", unguided" if c.unguided else f", w={c.weight:g}, tau={c.tau:g}")
    for name, c in PRESETS.items())


def schedule_options(fn):
    """--schedule plus one override per GuidanceConfig field (shared with interpolate/perturb)."""
    opts = [
        click.option("--schedule", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
                     help=f"Guidance preset. {SCHEDULE_HELP}."),
        click.option("--steps", type=int, help="Override: reverse timesteps (strided over 1000; 0 = all)."),
        click.option("--weight", type=float, help="Override: guidance weight w."),
        click.option("--tau", type=float, help="Override: gradient threshold tau (0 = off)."),
        click.option("--rounds", type=int, help="Override: self-recurrence rounds K per step."),
        click.option("--early-rounds", type=int, help="Override: rounds on the first --early-steps steps."),
        click.option("--early-steps", type=int, help="Override: how many first steps get --early-rounds."),
        click.option("--late-rounds", type=int, help="Override: rounds on the last --late-steps steps."),
        click.option("--late-steps", type=int, help="Override: how many last steps get --late-rounds."),
        click.option("--weight-end", type=float, help="Override: weight at the last guided step (linear from "
                     "--weight; strong early, weak late keeps textures out)."),
        click.option("--free-steps", type=int, help="Override: leave the last N steps unguided (the prior "
                     "cleans up)."),
        click.option("--eot-shift", type=int, help="Override: average the loss over copies shifted by up to N "
                     "pixels (0 = off)."),
        click.option("--eot-flip/--no-eot-flip", default=None, help="Override: also mirror those copies."),
        click.option("--eot-samples", type=int, help="Override: transformed copies per guided evaluation."),
        click.option("--grad-blur", type=float, help="Override: Gaussian blur sigma (pixels of z) of the "
                     "guidance gradient (0 = off)."),
        click.option("--spacing", type=click.Choice(["linear", "quadratic"]),
                     help="Override: timestep spacing (quadratic: denser near t = 0)."),
        click.option("--patience", type=int, help="Stop a sample when its best distance has not improved "
                     "for this many steps (0 = off)."),
        click.option("--max-distance", type=float, help="Stop a sample once its best distance is below this."),
        click.option("--update", type=click.Choice(["ddpm", "ddim"]), help="Override: reverse step rule."),
        click.option("--no-quantize", is_flag=True, default=None,
                     help="Optimise the float image instead of the 8-bit PNG (not recommended)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_from_options(kw: dict):
    """Pop the schedule options out of ``kw`` and build the GuidanceConfig."""
    name = kw.pop("schedule")
    quantize = False if kw.pop("no_quantize") else None
    return preset(name, steps=kw.pop("steps"), weight=kw.pop("weight"), tau=kw.pop("tau"),
                  rounds=kw.pop("rounds"), early_rounds=kw.pop("early_rounds"),
                  early_steps=kw.pop("early_steps"), late_rounds=kw.pop("late_rounds"),
                  late_steps=kw.pop("late_steps"), weight_end=kw.pop("weight_end"),
                  free_steps=kw.pop("free_steps"), eot_shift=kw.pop("eot_shift"), eot_flip=kw.pop("eot_flip"),
                  eot_samples=kw.pop("eot_samples"), grad_blur=kw.pop("grad_blur"), spacing=kw.pop("spacing"),
                  stop_patience=kw.pop("patience"),
                  max_distance=kw.pop("max_distance"), update=kw.pop("update"), quantize=quantize)


def result_table(summary: DecodeSummary, limit: int = 40) -> Table:
    table = Table(title=f"decoded {len(summary.records)} samples -> {summary.out}", show_lines=False)
    for col in ("target", "s", "best d", "rel", "cos", "realism", "best step", "evals", "s/sample"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in summary.records[:limit]:
        rel, nat = r.get("relative_distance"), r.get("naturalness")
        table.add_row(r["target_id"], str(r["sample"]), f"{r['best_distance']:.4g}",
                      "-" if rel is None else f"{rel:.3f}", f"{r['cosine']:.3f}",
                      "-" if nat is None else f"{nat:.2f}" + (" OFF" if r.get("off_manifold") else ""),
                      f"{r['best_step'] + 1}/{r['steps']}", str(r["evaluations"]), f"{r['seconds']:.2f}")
    if len(summary.records) > limit:
        table.caption = f"first {limit} of {len(summary.records)}; all in manifest.jsonl"
    return table


@click.command()
@click.option("--prior", default=DEFAULT_PRIOR, show_default=True,
              help="Diffusion prior: bundled:NAME, a local diffusers folder (DDPM or Stable Diffusion), "
                   "or a Hugging Face hub id.")
@click.option("-m", "--encoder", "--model", "spec", default=DEFAULT_ENCODER, show_default=True,
              help="Network whose feature is decoded: bundled:NAME, timm:NAME, open_clip:ARCH/TAG, ...")
@click.option("--weights", help="Local checkpoint for a timm/open_clip architecture, or 'random'.")
@click.option("--layer", "layers", multiple=True,
              help="Layer to match (default: the embedding). Repeat to match several (distances add up).")
@click.option("--keep-spatial", is_flag=True, help="Match hooked maps whole instead of pooled.")
@click.option("--token-pool", type=click.Choice(["cls", "mean"]), default="cls", show_default=True)
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
@click.option("-n", "--samples", default=4, show_default=True, help="Decoded images per target (seeds).")
@click.option("--seed", default=0, show_default=True, help="Sample s uses seed SEED+s (for every target).")
@click.option("--batch-size", default=8, show_default=True, help="Chains decoded together.")
@schedule_options
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (images/, final/, baseline/, manifest.jsonl, features.h5, contact sheet).")
@click.option("--overwrite", is_flag=True, help="Replace a previous decode in --out.")
@click.option("--no-baseline", is_flag=True, help="Skip the unguided baseline samples.")
@click.option("--save-trajectory", type=int, default=0, show_default=True,
              help="Also save the predicted image every N steps as a strip per sample (0 = off).")
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda when present; cuda:LOCAL_RANK under torchrun]")
@click.option("--shard", help="Decode only shard i of N (i/N, e.g. 0/4) into OUT/shards/; join with 'probe merge OUT'. "
              "Under torchrun the ranks are the shards and rank 0 merges.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and all records as JSON on stdout.")
def decode(prior, spec, weights, layers, keep_spatial, token_pool, store, group, index, paths, images, texts,
           vectors, samples, seed, batch_size, out, overwrite, no_baseline, save_trajectory, device, shard, as_json,
           **schedule) -> None:
    """Decode target features into images with a guided diffusion prior (arXiv 2509.07936).

    Each target is decoded SAMPLES times; every image is saved with the squared feature distance it
    reached, relative to an unguided sample of the same seed. Targets: store rows (--from F.h5
    --index 0:8), images (--image), CLIP prompts (--text) or raw vectors (--vector).

    A rerun of the same command into the same OUT resumes it (finished samples are kept); other
    settings are refused. OUT is locked while a decode writes it.
    """
    config = config_from_options(schedule)
    settings = DecodeSettings(samples=samples, seed=seed, batch_size=batch_size, config=config,
                              trajectory_every=save_trajectory, baseline=not no_baseline, overwrite=overwrite)
    rt = runtime(shard, device)
    try:
        if not rt.is_main and rt.group:
            click.get_current_context().find_root().obj["quiet"] = True  # rank 0 speaks for the run
        encoder = load_encoder_from_options({"spec": spec, "weights": weights, "layers": list(layers),
                                             "keep_spatial": keep_spatial, "token_pool": token_pool,
                                             "device": rt.device(device)})
        targets = resolve_targets(encoder, store=store, group=group, index=index, paths=paths, images=images,
                                  texts=texts, vectors=vectors)
        summary = decode_sharded(prior, encoder, targets, out, settings, rt)
    finally:
        rt.close()
    if summary is None:
        return
    if as_json:
        emit_json(summary.to_dict())
    if not quiet():
        console().print(result_table(summary))
        say(f"best images in {out / 'images'}, contact sheet {out / 'contact_sheet.png'}, "
            f"records in {out / 'manifest.jsonl'} ({summary.seconds:.1f} s)")


def decode_sharded(prior_spec: str, encoder, targets, out: Path, settings: DecodeSettings, rt: Runtime,
                   what: str = "decode") -> DecodeSummary | None:
    """decode_with_progress for this process's shard; under torchrun rank 0 merges once every rank is done.

    Returns the summary to print (None on ranks that have nothing to report)."""
    if rt.shard.single:
        return decode_with_progress(prior_spec, encoder, targets, out, settings, what)
    ok = False
    try:
        summary = decode_with_progress(prior_spec, encoder, targets, out, settings, what, shard=rt.shard)
        ok = True
    finally:
        all_ok = rt.all_ok(ok)  # every rank waits here, also when one failed (then nobody merges)
    if not rt.group:
        say(f"shard {rt.shard} done: {len(summary.records)} samples in {out / 'shards' / rt.shard.name}; "
            f"run 'probe merge {out}' once all {rt.shard.count} shards are done")
        return None
    if not all_ok:
        raise ProbeError(f"{out}: another rank failed; every finished batch is kept in {out / 'shards'}, "
                         "rerun the same command to resume")
    if not rt.is_main:
        return None
    t0 = time.perf_counter()
    records = merge_decodes(out, sheet=settings.sheet, on_warning=warn)
    say(f"merged {rt.shard.count} shards into {out} ({time.perf_counter() - t0:.1f} s)")
    return DecodeSummary(out=out, records=records, seconds=summary.seconds + time.perf_counter() - t0,
                         n_targets=len(targets), samples=settings.samples, baseline_seconds=summary.baseline_seconds,
                         resumed=summary.resumed)


def decode_with_progress(prior_spec: str, encoder, targets, out: Path, settings: DecodeSettings,
                         what: str = "decode", shard: Shard | None = None) -> DecodeSummary:
    """decode_targets with the header line and the step progress bar (shared by decode and the walks)."""
    diffusion = load_prior(prior_spec, encoder.device)
    config = settings.config
    n_steps = len(config.timesteps(diffusion.num_train_timesteps))
    samples, batch_size = settings.samples, settings.batch_size
    say(f"[bold]{encoder.spec}[/] [{'+'.join(encoder.layers)}] <- [bold]{diffusion.spec}[/] on {encoder.device}: "
        f"{what}: {len(targets)} target(s) x {samples} sample(s), schedule {config.name} ({n_steps} steps, "
        f"{config.evaluations(diffusion.num_train_timesteps)} guided evaluations per sample) -> {out}")
    n_batches = -(-len(targets) * samples // batch_size)
    base_batches = -(-samples // batch_size) if settings.baseline else 0
    # progress in guided evaluations, not steps: late-step emphasis puts most of the work in the last steps
    work = list(itertools.accumulate(config.rounds_at(i, n_steps) for i in range(n_steps)))
    per_batch = work[-1]
    with progress(what, base_batches * n_steps + n_batches * per_batch, unit="evals") as update:
        def on_event(ev: DecodeEvent) -> None:
            if ev.phase == "baseline":  # an unguided step counted as one evaluation
                update((ev.batch - 1) * n_steps + ev.step, f"unguided baseline {ev.batch}/{ev.n_batches}")
                return
            finite = [d for d in ev.best if d == d and d != float("inf")]
            extra = f"batch {ev.batch}/{ev.n_batches}" + (f" best d {min(finite):.4g}" if finite else "")
            update(base_batches * n_steps + (ev.batch - 1) * per_batch + work[ev.step - 1], extra,
                   total=base_batches * n_steps + ev.n_batches * per_batch)  # a shard or a resume does fewer
        summary = decode_targets(diffusion, encoder, targets, out, settings, on_event=on_event, shard=shard,
                                 on_warning=warn)
    warn_off_manifold(summary.records, settings.off_manifold_threshold)
    return summary


def warn_off_manifold(records: list[dict], threshold: float) -> None:
    """One warning line when decodes look unlike the prior's own samples (probe.naturalness)."""
    flagged = [r for r in records if r.get("off_manifold")]
    if flagged:
        names = ", ".join(r["image"] for r in flagged[:3]) + (", ..." if len(flagged) > 3 else "")
        warn(f"{len(flagged)} of {len(records)} decoded images look off the prior's manifold (realism score > "
             f"{threshold:g} x its unguided samples'): {names}. Their attributes say little about the feature; "
             f"try a lower --weight or more --eot-shift.")
