"""Click options shared by several commands: declared once here, turned into the workflows' frozen option
dataclasses (:mod:`probe.workflows.options`), so a default cannot drift between commands and an option
cannot be declared without reaching the code that uses it.

* :func:`encoder_options` -> ``encoder=EncoderOptions`` (``extract``, and inside :func:`decode_options`);
* :func:`decode_options` -> ``prior=``, ``encoder=``, ``decode=DecodeOptions``, ``out=`` (``decode``,
  ``interpolate``, ``perturb``, ``map``);
* parameter types for the small option languages (``--components 1-5``, ``--scales -3,0,3``,
  ``--grid 4x4``), parsed by the same functions the Python API uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from probe.diffusion.priors import CHECKPOINTS, DEFAULT_PRIOR, PRECISIONS
from probe.diffusion.schedules import (
    AUTO,
    AUTO_CHOICES,
    BEST_BY,
    BETAS,
    CLAMPS,
    DEFAULT_PRESET,
    LOSS_RESIZES,
    POOL_RANKS,
    PRESETS,
    RULES,
    SCHEDULES,
)
from probe.errors import UsageError
from probe.models.registry import DEFAULT_ENCODER
from probe.workflows.options import DecodeOptions, EncoderOptions

SCHEDULE_HELP = f"{AUTO}: {AUTO_CHOICES[0]} where the prior's training data is installed (bundled priors), else " \
    f"{AUTO_CHOICES[1]} where its seed pool is at hand (shipped, or drawn by an earlier run), else " \
    f"{AUTO_CHOICES[2]}; fast: {', then '.join(RULES['fast'])} by the same rule; " + "; ".join(
    f"{name}: {c.steps} {'' if c.spacing == 'linear' else c.spacing + ' '}steps, K={c.rounds}"
    + (f" (K={c.early_rounds} on the first {c.early_steps}"
       + (f", {c.candidates} candidate seeds" if c.candidates > 1 else "")
       + (f", seed pool of {c.pool}" if c.pool else "") + ")"
       if c.early_steps and not (c.unguided or c.data_start) else "")
    + (f" (from the nearest of {c.pool} training images, noised to t/T={c.data_start:g})" if c.data_start else "")
    + (f" (K={c.late_rounds} on the last {c.late_steps})" if c.late_steps and c.late_rounds else "")
    + (", unguided" if c.unguided else f", w={c.weight:g}" + (f" (x0 cap {c.x0_cap:g})" if c.x0_cap else "")
       + f", tau={c.tau:g}")
    for name, c in PRESETS.items())


class _Parsed(click.ParamType):
    """A Click type whose value is parsed by one of probe's own parsers (UsageError -> Click's error)."""

    def __init__(self, name: str, parse: Callable[[str], Any]):
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except UsageError as err:
            self.fail(str(err).split(": ", 1)[-1], param, ctx)


def _parser(module: str, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(text)
    return parse


class _Finite(click.ParamType):
    """A float that means something: ``nan``, ``inf`` and ``-inf`` are usage errors (exit 2), for every
    numeric option at once (a NaN threshold would run and write NaN into the manifest)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = _Finite()
#: seeds: sample s of a run uses SEED + s (and candidates add offsets), all within numpy's and torch's range
SEED = click.IntRange(min=0, max=2**62)

COMPONENTS = _Parsed("components", _parser("probe.geometry.directions", "parse_components"))
SCALES = _Parsed("scales", _parser("probe.geometry.directions", "parse_scales"))
GRID = _Parsed("grid", _parser("probe.geometry.maps", "parse_grid"))


def _apply(fn: Callable, opts: list) -> Callable:
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _take(kwargs: dict, names: tuple[str, ...]) -> dict:
    """Remove every declared parameter from the command's kwargs (none can be left behind unread)."""
    return {n: kwargs.pop(n) for n in names}


ENCODER_PARAMS = ("spec", "weights", "layers", "keep_spatial", "token_pool", "device")


def encoder_options(multiple_layers: bool = True, infer: bool = False):
    """--model/--weights/--layer/--keep-spatial/--token-pool/--device -> ``encoder=EncoderOptions``.

    ``infer``: with no --model the encoder comes from the feature store the command reads
    (:meth:`EncoderOptions.resolved`), else the default; without it the default is shown.
    """
    spec_help = "Model spec: bundled:NAME, timm:NAME, open_clip:ARCH/TAG, torchscript:PATH"
    spec = (click.option("-m", "--model", "--encoder", "spec",
                         help=f"{spec_help} [default: the one that made the feature store, else {DEFAULT_ENCODER}].")
            if infer else
            click.option("-m", "--model", "--encoder", "spec", default=DEFAULT_ENCODER, show_default=True,
                         help=spec_help + "."))
    opts = [
        spec,
        click.option("--weights", help="Local checkpoint for a timm/open_clip architecture, or 'random'."),
        click.option("--layer", "layers", multiple=multiple_layers,
                     help="Module name to read (see 'probe models layers SPEC') [default: "
                          + ("the store's layer, else " if infer else "") + "the embedding]."
                          + (" Repeatable (decoding matches them all; distances add up)." if multiple_layers
                             else "")),
        click.option("--keep-spatial", is_flag=True, help="Keep hooked maps whole instead of pooling."),
        click.option("--token-pool", type=click.Choice(["cls", "mean"]),
                     help="How ViT token outputs become a vector [default: " + ("the store's, else " if infer else "")
                          + "cls]."),
        click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda when present]"),
    ]

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            o = _take(kwargs, ENCODER_PARAMS)
            layers = o["layers"]
            o["layers"] = tuple([layers] if isinstance(layers, str) else layers or ())
            if any(not name.strip() for name in o["layers"]):  # checked before any model loads
                raise UsageError("--layer '': empty layer name; list valid names with 'probe models layers SPEC'")
            return fn(*args, encoder=EncoderOptions(**o), **kwargs)
        return _apply(inner, opts)
    return wrap


class BatchSize(click.ParamType):
    """--batch-size: 'auto' or an integer >= 1."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            self.fail(f"{value!r} is not 'auto' or an integer >= 1", param, ctx)
        return n


def _same(value: Any) -> Any:
    return value


#: CLI parameter -> DecodeOptions.build keyword (value converters where the CLI spells it differently)
DECODE_PARAMS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    **{name: (name, _same) for name in ("samples", "seed", "batch_size", "schedule", "steps", "weight", "tau",
                                        "rounds", "early_rounds", "early_steps", "late_rounds", "late_steps",
                                        "weight_end", "free_steps", "eot_shift", "eot_flip", "eot_samples",
                                        "grad_blur", "x0_cap", "candidates", "narrow_at", "narrow_keep", "pool",
                                        "pool_rank", "data_start", "rescale",
                                        "spacing", "patience",
                                        "max_distance", "update", "grad_min_weight",
                                        "clamp", "clip_x0", "beta", "loss_resize", "best_by", "precision",
                                        "checkpoint", "overwrite")},
    "no_quantize": ("quantize", lambda v: False if v else None),
    "no_baseline": ("baseline", lambda v: not v),
    "save_trajectory": ("trajectory_every", _same),
}


#: the five places where probe's presets depart from the official code (docs/method.md tables them);
#: ``--schedule paper`` sets every one to the official value, these flags set one at a time
PAPER_EXACTNESS = [
    click.option("--clamp", type=click.Choice(CLAMPS),
                 help="Override: the [0, 1] clamp of the image the loss sees. straight-through: clamped, "
                      "saturated pixels still pass their gradient (probe's presets); hard: they pass none; "
                      "none: never clamped (the official code, --schedule paper)."),
    click.option("--clip-x0/--no-clip-x0", "clip_x0", default=None,
                 help="Override: clip the guided x0 estimate to [-1, 1] when the prior's scheduler asks for it "
                      "(clip_sample; probe's presets), or never (the official code, --schedule paper)."),
    click.option("--beta", type=click.Choice(BETAS),
                 help="Override: beta of a DDPM step. chain: 1 - abar_t/abar_prev, right for any spacing "
                      "(probe's presets); scheduler: the scheduler's own beta_t with the official code's "
                      "float64 arithmetic (--schedule paper; strided chains still use chain)."),
    click.option("--loss-resize", type=click.Choice(LOSS_RESIZES),
                 help="Override: how the decoded image reaches the network in the loss. eval: the encoder's "
                      "eval transform, as in extraction (probe's presets); whole: the whole image resized "
                      "bicubic, no crop, antialias or clamp (the official code, --schedule paper)."),
    click.option("--best-by", type=click.Choice(BEST_BY),
                 help="Override: what picks the best image. saved: the saved 8-bit PNG's distance (probe's "
                      "presets); loss: the optimised loss (the official code, --schedule paper). The reported "
                      "distance is always the saved PNG's."),
]

#: how the prior computes (``Prior.configure``): cost and memory, not the method
PRIOR_COMPUTE = [
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="Prior precision: bf16 runs the UNet and VAE decoder under bfloat16 autocast (faster, "
                      "less memory on GPUs; on a CPU without bf16 instructions about 10x slower, and said so; the "
                      "guidance arithmetic stays fp32; recorded in the manifest) "
                      "[default: fp32]."),
    click.option("--checkpointing", "checkpoint", type=click.Choice(CHECKPOINTS),
                 help="Gradient checkpointing of the prior: recompute the activations of the VAE decoder "
                      "(vae; latent priors only), the UNet (unet) or both (all) in the backward pass instead of "
                      "storing them (less memory, more time) [default: none]."),
]


def decode_options(samples: int = 4, trajectory: bool = False, out_help: str = "Output folder."):
    """Every option a decoding command shares with ``probe decode``, one declaration for all of them.

    The command receives ``prior`` (spec), ``encoder`` (EncoderOptions, inferred from its store when
    --model is not given), ``decode`` (a frozen DecodeOptions) and ``out``.
    """
    opts = [
        click.option("--prior", default=DEFAULT_PRIOR, show_default=True,
                     help="Diffusion prior: bundled:NAME, a local diffusers folder (DDPM or Stable Diffusion), "
                          "or a Hugging Face hub id."),
        click.option("-n", "--samples", type=click.IntRange(min=1), default=samples, show_default=True,
                     help="Decoded images per target; sample s uses seed SEED+s for every target."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Base seed of the samples."),
        click.option("--batch-size", type=BatchSize(), default="auto", show_default=True,
                     help="Chains per network call ('auto': chosen from the device and the networks' memory). "
                          "The sampler keeps every call full: chains of the next samples enter as others finish "
                          "their layout stage; the images do not depend on it."),
        click.option("--grad-min-weight", type=FINITE, default=None,
                     help="Rounds whose capped guidance weight is below this run forward-only (no backward "
                          "pass; guidance dropped there). Off by default."),
        click.option("--schedule", type=click.Choice(list(SCHEDULES)), default=DEFAULT_PRESET, show_default=True,
                     help=f"Guidance preset. {SCHEDULE_HELP}."),
        click.option("--steps", type=int, help="Override: reverse timesteps (strided over 1000; 0 = all)."),
        click.option("--weight", type=FINITE, help="Override: guidance weight w."),
        click.option("--tau", type=FINITE, help="Override: gradient threshold tau (0 = off)."),
        click.option("--rounds", type=int, help="Override: self-recurrence rounds K per step."),
        click.option("--early-rounds", type=int, help="Override: rounds on the first --early-steps steps."),
        click.option("--early-steps", type=int, help="Override: how many first steps get --early-rounds."),
        click.option("--late-rounds", type=int, help="Override: rounds on the last --late-steps steps."),
        click.option("--late-steps", type=int, help="Override: how many last steps get --late-rounds."),
        click.option("--weight-end", type=FINITE, help="Override: weight at the last guided step (linear from "
                     "--weight; strong early, weak late keeps textures out)."),
        click.option("--free-steps", type=int, help="Override: leave the last N steps unguided (the prior "
                     "cleans up)."),
        click.option("--eot-shift", type=int, help="Override: average the loss over copies shifted by up to N "
                     "pixels (0 = off)."),
        click.option("--eot-flip/--no-eot-flip", default=None, help="Override: also mirror those copies."),
        click.option("--eot-samples", type=int, help="Override: transformed copies per guided evaluation."),
        click.option("--grad-blur", type=FINITE, help="Override: Gaussian blur sigma (pixels of z) of the "
                     "guidance gradient (0 = off)."),
        click.option("--x0-cap", type=FINITE, help="Override: at most this weight times sqrt(abar/(1-abar)) at "
                     "each step, so guidance never moves the x0 estimate by more than about this (0 = off)."),
        click.option("--candidates", type=int, help="Override: seeds tried per sample through the first "
                     "--early-steps steps; the one closest to the target is kept (1 = off)."),
        click.option("--narrow-at", type=int, help="Override: after this many steps keep only --narrow-keep "
                     "candidates (the closest), before the selection at --early-steps (0 = off)."),
        click.option("--narrow-keep", type=int, help="Override: candidates kept at --narrow-at (0 = off)."),
        click.option("--pool", type=int, help="Override: take each sample's candidate seeds from this many "
                     "unguided prior samples (drawn once per prior and network, cached): the ones whose "
                     "features lie closest to the target (0 = off)."),
        click.option("--pool-rank", type=click.Choice(list(POOL_RANKS)), default=None,
                     help="Override: rank the pool's samples by squared distance to the target (l2) or by the "
                          "cosine alone."),
        click.option("--data-start", type=FINITE, help="Override: start each sample from the prior's training "
                     "image closest to the target (of --pool of them; bundled priors only), noised to this "
                     "level t/T (0.571 in the data preset); the steps before it are not run (0 = off: noise)."),
        click.option("--rescale", type=FINITE, help="Override: pull the guided noise prediction back to the "
                     "unguided one's norm, 0..1 (1 = same norm; keeps guidance from adding contrast)."),
        click.option("--spacing", type=click.Choice(["linear", "quadratic"]),
                     help="Override: timestep spacing (quadratic: denser near t = 0)."),
        click.option("--patience", type=int, help="Stop a sample when its best distance has not improved "
                     "for this many steps (0 = off)."),
        click.option("--max-distance", type=FINITE, help="Stop a sample once its best distance is below this."),
        click.option("--update", type=click.Choice(["ddpm", "ddim"]), help="Override: reverse step rule."),
        click.option("--no-quantize", is_flag=True, default=None,
                     help="Optimise the float image instead of the 8-bit PNG (not recommended)."),
        *PAPER_EXACTNESS,
        *PRIOR_COMPUTE,
        click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help=out_help),
        click.option("--overwrite", is_flag=True, help="Replace a previous decode in --out."),
        click.option("--no-baseline", is_flag=True, help="Skip the unguided baseline samples."),
    ]
    if trajectory:
        opts.append(click.option("--save-trajectory", type=int, default=0, show_default=True,
                                 help="Also save the predicted image every N steps as a strip per sample (0 = off)."))
    names = tuple(n for n in DECODE_PARAMS if trajectory or n != "save_trajectory")

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            given = _take(kwargs, names)
            decode = DecodeOptions.build(**{DECODE_PARAMS[n][0]: DECODE_PARAMS[n][1](v) for n, v in given.items()})
            return fn(*args, prior=kwargs.pop("prior"), decode=decode, **kwargs)
        return encoder_options(infer=True)(_apply(inner, opts))
    return wrap
