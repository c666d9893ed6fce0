"""Decode speed in wall time: seconds per decoded image, side by side in one run (issue 23 item 1).

For each prior set (fashion: ``bundled:fashion-ddpm`` + ``bundled:fashion-cnn``; emoji: ``bundled:emoji-ddpm`` +
``bundled:efficientnet_lite0``) and the same targets (random images of the prior's size, through the encoder):

- ``fast`` and ``balanced`` (the default): ``--samples`` samples through the sampler's queue
  (``sample(..., max_chains=B)``, B = ``--batch-size``, default 'auto' as ``probe decode``);
- ``<preset>/one-at-a-time``: the same samples one sampler call each (``max_chains`` unbounded): the call
  pattern of the decode before the queue (--batch-size 8 with 48 candidates: one sample per call, 48 chains
  through the layout stage, then one chain alone) — the "before" of the same run (``--no-before`` skips it);
- ``paper``: 12,960 guided evaluations per image are too many to run here, so it is extrapolated: a truncated
  paper chain (``steps=--paper-steps``, ``rounds=--paper-rounds`` per step, the paper's arithmetic otherwise)
  of the same samples through the queue gives seconds per guided evaluation, × 12,960 (stated in the JSON);
- ``floor``: a bare loop of the same UNet and encoder, forward + backward (``torch.autograd.grad`` to z) at the
  same chains per call, for each preset's evaluations — what the evaluations alone cost;
- ``forward_only``: the same loop without the backward pass (what ``--grad-min-weight`` rounds cost).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per row (reset before it); on the CPU the process's
peak resident set (``ru_maxrss``, monotone over the run: a row's value includes every earlier row's peak).
FLOP/s: ``torch.utils.flop_counter`` counts one forward+backward evaluation at batch 1; achieved = FLOPs ×
evaluations / seconds, and its share of ``--peak-tflops`` when given.

  CPU, small (a couple of samples):   python benchmarks/decode_speed.py --samples 2 --sets fashion
  the demo-sized run (2 targets × 4):  python benchmarks/decode_speed.py --samples 8
  GPU:                                  python benchmarks/decode_speed.py --device cuda --peak-tflops 989

Results: benchmarks/results/decode_speed.json (rewritten after every row).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from probe.diffusion.memory import auto_chains  # noqa: E402
from probe.diffusion.priors import load_prior  # noqa: E402
from probe.diffusion.sampler import concat_features, network_input, sample  # noqa: E402
from probe.diffusion.schedules import PRESETS, preset  # noqa: E402
from probe.heap import keep_freed_memory  # noqa: E402
from probe.models.registry import load_encoder  # noqa: E402
from probe.starts import chain_starts  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETS = {"fashion": ("bundled:fashion-ddpm", "bundled:fashion-cnn"),
        "emoji": ("bundled:emoji-ddpm", "bundled:efficientnet_lite0")}
PAPER_EVALUATIONS = PRESETS["paper"].evaluations(1000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fashion,emoji", help="comma-separated: fashion, emoji")
    ap.add_argument("--samples", type=int, default=8, help="decoded images per preset (targets × samples)")
    ap.add_argument("--targets", type=int, default=2, help="distinct targets (samples spread over them)")
    ap.add_argument("--presets", default="fast,balanced")
    ap.add_argument("--extra", action="append", default=[], metavar="BASE:key=val,...",
                    help="also time this configuration (a preset with overrides), e.g. pooled:rounds=2")
    ap.add_argument("--batch-size", default="auto", help="chains per network call: 'auto' or N")
    ap.add_argument("--no-before", action="store_true", help="skip the one-sample-per-call rows")
    ap.add_argument("--no-variants", action="store_true", help="skip the grad_min_weight=0.25 twin of each preset")
    ap.add_argument("--paper-steps", type=int, default=3)
    ap.add_argument("--paper-rounds", type=int, default=2)
    ap.add_argument("--floor-calls", type=int, default=3, help="timed calls of the bare loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for the achieved share")
    ap.add_argument("--out", default=str(RESULTS / "decode_speed.json"))
    return ap.parse_args(argv)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_eval(prior, encoder, z: torch.Tensor, target: torch.Tensor, backward: bool) -> None:
    """One evaluation of the networks alone: ε(z), x̂0, the encoder's features, ‖f − f*‖², ∂/∂z."""
    with torch.set_grad_enabled(backward):
        z = z.detach().requires_grad_(backward)
        eps = prior.eps(z, prior.num_train_timesteps // 2)
        x = prior.decode((z - 0.5 * eps) / 0.7)
        f = concat_features(encoder, network_input(encoder, ((x + 1) / 2), False))
        loss = (f - target).pow(2).sum()
        if backward:
            loss.backward()  # the networks' weights do not require grad: only the path to z is computed


def time_bare(prior, encoder, b: int, target: torch.Tensor, backward: bool, calls: int) -> float:
    """Seconds per evaluation (per chain) of the bare loop at ``b`` chains per call."""
    z = torch.randn(b, *prior.latent_shape, device=prior.device)
    tgt = target[:1].expand(b, -1)
    bare_eval(prior, encoder, z, tgt, backward)
    _sync(prior.device)
    t0 = time.perf_counter()
    for _ in range(calls):
        bare_eval(prior, encoder, z, tgt, backward)
    _sync(prior.device)
    return (time.perf_counter() - t0) / calls / b


def flops_per_eval(prior, encoder, target: torch.Tensor) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    z = torch.randn(1, *prior.latent_shape, device=prior.device)
    try:
        with FlopCounterMode(display=False) as fc:
            bare_eval(prior, encoder, z, target[:1], True)
    except RuntimeError:
        return None
    return float(fc.get_total_flops())


def run_set(name: str, args: argparse.Namespace, out: dict, save) -> None:
    device = torch.device(args.device)
    prior = load_prior(SETS[name][0], args.device)
    encoder = load_encoder(SETS[name][1], device=args.device)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(args.targets, prior.channels, prior.image_size, prior.image_size, generator=gen)
    imgs = torch.nn.functional.avg_pool2d(imgs, 5, 1, 2)
    with torch.no_grad():
        tvec = concat_features(encoder, encoder.resize(imgs.to(encoder.device))).float()
    targets = torch.stack([tvec[j % args.targets] for j in range(args.samples)])
    seeds = [j // args.targets for j in range(args.samples)]  # sample s of every target: seed s
    chains = auto_chains(prior, encoder) if args.batch_size == "auto" else int(args.batch_size)
    rows = out.setdefault("rows", [])
    flops = flops_per_eval(prior, encoder, tvec)
    fb = time_bare(prior, encoder, chains, tvec, True, args.floor_calls)
    fo = time_bare(prior, encoder, chains, tvec, False, args.floor_calls)
    base = {"set": name, "prior": SETS[name][0], "encoder": SETS[name][1], "device": str(device),
            "chains_per_call": chains, "samples": args.samples}
    rows.append({**base, "row": "floor/eval", "seconds_per_eval_fwd_bwd": fb, "seconds_per_eval_fwd_only": fo,
                 "forward_only_cost_ratio": fo / fb, "flops_per_eval": flops})
    # one chain per sample (a seed pool, the paper) never fills a call beyond the samples: its fair floor is
    # the bare loop at that many chains per call
    live = min(chains, args.samples)
    fb_live = time_bare(prior, encoder, live, tvec, True, args.floor_calls)
    fo_live = time_bare(prior, encoder, live, tvec, False, args.floor_calls)
    rows.append({**base, "row": f"floor/eval at {live} chains per call", "seconds_per_eval_fwd_bwd": fb_live,
                 "seconds_per_eval_fwd_only": fo_live})
    save()

    def decode(label: str, cfg, per_call: int | None, one_at_a_time: bool = False) -> dict:
        # a seed pool's one-time cost (drawn or shipped images, featurised once per network) is timed apart
        tp = time.perf_counter()
        starts = chain_starts(prior, encoder, cfg, targets.numpy(), seeds, max(seeds) + 1, chains)
        pool_seconds = time.perf_counter() - tp
        _peak_reset(device)
        t0 = time.perf_counter()
        if one_at_a_time:
            res = [sample(prior, encoder, targets[j], [seeds[j]], cfg,
                          chain_seeds=starts.chain_seeds and [starts.chain_seeds[j]],
                          start_images=None if starts.start_images is None else starts.start_images[j:j + 1])
                   for j in range(args.samples)]
            evals = sum(int(r.evaluations.sum()) for r in res)
            fwd = 0
        else:
            r = sample(prior, encoder, targets, seeds, cfg, max_chains=per_call, **starts.sampler_kwargs())
            evals, fwd = int(r.evaluations.sum()), int(r.forward_only.sum())
        _sync(device)
        sec = time.perf_counter() - t0
        def floor(per_fwd_bwd: float, per_fwd_only: float) -> float:  # the bare loop's seconds per image
            return ((evals - fwd) * per_fwd_bwd + fwd * per_fwd_only) / args.samples

        row = {**base, "row": label, "seconds": sec, "seconds_per_image": sec / args.samples,
               "evaluations_per_image": evals / args.samples, "forward_only_per_image": fwd / args.samples,
               "floor_seconds_per_image": floor(fb, fo), "peak_memory_gib": _peak_gib(device)}
        if cfg.pool:
            row["pool_setup_seconds"] = pool_seconds  # first use in this cache: featurising the pool
        row["seconds_vs_floor"] = row["seconds_per_image"] / row["floor_seconds_per_image"]
        if cfg.chains_at(0) == 1:  # never more chains than samples: the floor at that batch
            row["floor_at_samples_seconds_per_image"] = floor(fb_live, fo_live)
            row["seconds_vs_floor_at_samples"] = row["seconds_per_image"] / row["floor_at_samples_seconds_per_image"]
        if flops:
            row["achieved_tflops"] = flops * evals / sec / 1e12
            if args.peak_tflops:
                row["share_of_peak"] = row["achieved_tflops"] / args.peak_tflops
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)
        return row

    from decode_fidelity import parse_extra

    configs = [(p, preset(p)) for p in args.presets.split(",") if p] + [(x, parse_extra(x)) for x in args.extra]
    for p, cfg in configs:
        decode(p, cfg, chains)
        if not cfg.grad_min_weight and not args.no_variants:  # pooled has it already
            decode(f"{p}/grad_min_weight=0.25", cfg.replace(grad_min_weight=0.25), chains)
        if not args.no_before:
            decode(f"{p}/one-at-a-time", cfg, None, one_at_a_time=True)
    paper = preset("paper").replace(steps=args.paper_steps, early_steps=0, rounds=args.paper_rounds)
    row = decode(f"paper/truncated {args.paper_steps} steps x {args.paper_rounds} rounds", paper, chains)
    per_eval = row["seconds"] / (row["evaluations_per_image"] * args.samples)
    rows.append({**base, "row": "paper (extrapolated)", "evaluations_per_image": PAPER_EVALUATIONS,
                 "seconds_per_image": per_eval * PAPER_EVALUATIONS * 1.0,
                 "note": "seconds per guided evaluation of the truncated paper chain × 12,960; the paper's "
                         "samples share calls through the queue as the presets' do"})
    save()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # before any row, so the floor loop runs on the same heap as the sampler (PROBE_HEAP=system: glibc's own)
    heap = "kept (probe.heap)" if keep_freed_memory() else "system"
    out = {"benchmark": "decode_speed", "host": platform.node(), "torch": torch.__version__, "heap": heap,
           "threads": torch.get_num_threads(), "load_average_start": list(__import__("os").getloadavg()),
           "args": vars(args)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out["load_average_now"] = list(__import__("os").getloadavg())
        path.write_text(json.dumps(out, indent=1))
    for name in args.sets.split(","):
        run_set(name, args, out, save)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
