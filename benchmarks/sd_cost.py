"""What one guided evaluation costs with Stable Diffusion v1.4 at full size: seconds and peak memory.

The paper decodes with SD v1.4 at 512² and 12,960 guided evaluations per image (UNet forward and
backward through z_t, VAE decode with gradients, the encoder, then the post-guidance decode). This
script builds the SD v1.4 architecture from its configs at random values
(``probe.diffusion.architectures``; the cost does not depend on the weights) and runs probe's real
sampler (``probe.diffusion.sampler.sample``) through the latent prior path, with the paper's ResNet-50
at random init as the encoder, for every combination of batch size, precision (fp32, or bf16 autocast
of UNet and VAE) and gradient checkpointing (none, VAE decoder, VAE decoder + UNet). Attention is
diffusers' default processor (PyTorch SDPA); the JSON records which one ran.

Per configuration: one warm-up call of 1 round (``--warmup``, default on cuda only), then one call
of ``--rounds`` rounds at t = 999; seconds per guided evaluation = that call's wall time / rounds (it
includes one encoder pass on the target check, negligible next to a round). Peak memory =
``torch.cuda.max_memory_allocated`` since the warm-up (reset per configuration). Derived: seconds per
image of the paper schedule (12,960 evaluations) and of the default preset, each = evaluations ×
seconds per evaluation / batch size (a batch decodes ``batch`` images at once).

  GPU (the full grid, < 4 min on one H100):  python benchmarks/sd_cost.py --device cuda
  CPU smoke run (< 3 min):                    python benchmarks/sd_cost.py --quick

Every configuration is tried on its own (out-of-memory and other failures are recorded, not fatal) and
the JSON is rewritten after each one; ``--max-minutes`` skips (and records) the configurations that would
not fit the time budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probe.diffusion.architectures import sd_v1_4_random  # noqa: E402
from probe.diffusion.sampler import sample  # noqa: E402
from probe.diffusion.schedules import AUTO_CHOICES, PRESETS, GuidanceConfig  # noqa: E402
from probe.models.registry import load_encoder  # noqa: E402

# the default schedule (auto) runs SD with its fallback: SD ships no seed pool
DEFAULT_PRESET = AUTO_CHOICES[-1]

RESULTS = ROOT / "benchmarks" / "results"
GIB = 1024 ** 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--resolution", type=int, default=512, help="decoded image size, a multiple of 64 (paper: 512)")
    ap.add_argument("--batches", default="1,2,4", help="comma-separated batch sizes")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    ap.add_argument("--checkpoint", default="none,vae,all",
                    help="comma-separated gradient checkpointing modes: none, vae, unet, all (vae+unet)")
    ap.add_argument("--rounds", type=int, default=3, help="guided evaluations timed per configuration")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed warm-up calls per configuration (default 1 on cuda, 0 on cpu)")
    ap.add_argument("--encoder", default="timm:resnet50", help="encoder spec, built with --weights random")
    ap.add_argument("--max-minutes", type=float, default=3.5, help="skip configurations past this budget")
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: --resolution 128 --batches 1 --precisions fp32 --checkpoint none,all "
                         "--rounds 1 --max-minutes 2.5")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default results/sd_cost.json on cuda, results/sd_cost_cpu.json on cpu)")
    args = ap.parse_args(argv)
    if args.quick:
        args.resolution, args.batches, args.precisions, args.checkpoint, args.rounds = 128, "1", "fp32", "none,all", 1
        args.max_minutes = min(args.max_minutes, 2.5)
    if args.warmup is None:
        args.warmup = 1 if args.device.startswith("cuda") else 0
    if args.out is None:
        args.out = RESULTS / ("sd_cost.json" if args.device.startswith("cuda") else "sd_cost_cpu.json")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(prior, encoder, target: torch.Tensor, batch: int, rounds: int, device: torch.device,
            warmup: int = 1) -> dict:
    """One configuration (the prior already configured): warm-up, timed call, peak memory."""
    seeds = list(range(batch))
    tgt = target.expand(batch, -1)
    cfg = GuidanceConfig(name="cost", steps=1, rounds=1, early_steps=0, late_steps=0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        sample(prior, encoder, tgt, seeds, cfg)
    _sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = sample(prior, encoder, tgt, seeds, cfg.replace(rounds=rounds))
    _sync(device)
    secs = time.perf_counter() - t0
    if int(res.evaluations.min()) != rounds:
        raise RuntimeError(f"expected {rounds} guided evaluations per chain, the sampler ran "
                           f"{res.evaluations.tolist()}")
    per_eval = secs / rounds
    row = {"warmup_s": round(warm, 4), "s_per_eval": round(per_eval, 4),
           "s_per_image_eval": round(per_eval / batch, 4)}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 3)
    return row


def derived(row: dict, batch: int) -> dict:
    paper = PRESETS["paper"].evaluations(1000)
    default = PRESETS[DEFAULT_PRESET].evaluations(1000)
    per_img = row["s_per_eval"] / batch
    return {"paper_s_per_image": round(paper * per_img, 1), "default_s_per_image": round(default * per_img, 1)}


def table(doc: dict) -> str:
    lines = [f"SD v1.4 (random init) at {doc['resolution']}², encoder {doc['encoder']}, {doc['device_name']}; "
             f"paper = {doc['paper_evaluations']} evaluations, default ({doc['default_preset']}) = "
             f"{doc['default_evaluations']}",
             "| batch | precision | checkpointing | s / evaluation | s / image-evaluation | peak GiB | "
             "paper s / image | default s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if r["status"] != "ok":
            note = r["status"] + (f": {r['error']}" if r.get("error") else "")
            lines.append(f"| {r['batch']} | {r['precision']} | {r['checkpoint']} | {note} | | | | |")
            continue
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        lines.append(f"| {r['batch']} | {r['precision']} | {r['checkpoint']} | {r['s_per_eval']:.3f} | "
                     f"{r['s_per_image_eval']:.3f} | {peak} | {r['paper_s_per_image']:.0f} | "
                     f"{r['default_s_per_image']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    budget = args.max_minutes * 60
    batches = [int(b) for b in args.batches.split(",")]
    precisions = args.precisions.split(",")
    checkpoints = args.checkpoint.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    prior = sd_v1_4_random(args.resolution, device=device)
    encoder = load_encoder(args.encoder, weights="random", device=device)
    build_s = time.perf_counter() - t0
    with torch.no_grad():
        target = encoder(torch.rand(1, 3, args.resolution, args.resolution, device=device)).float()
    attention = sorted({type(p).__name__ for p in prior.unet.attn_processors.values()})
    doc = {
        "benchmark": "sd_cost", "resolution": args.resolution, "latent_shape": list(prior.latent_shape),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__, "attention_processors": attention,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "encoder": args.encoder, "encoder_weights": "random", "prior": prior.spec,
        "unet_params_m": round(sum(p.numel() for p in prior.unet.parameters()) / 1e6, 1),
        "vae_params_m": round(sum(p.numel() for p in prior.vae.parameters()) / 1e6, 1),
        "rounds": args.rounds, "warmup_calls": args.warmup, "build_s": round(build_s, 1),
        "paper_evaluations": PRESETS["paper"].evaluations(1000), "default_preset": DEFAULT_PRESET,
        "default_evaluations": PRESETS[DEFAULT_PRESET].evaluations(1000), "rows": [],
    }
    print(f"built SD v1.4 ({doc['unet_params_m']} M UNet, {doc['vae_params_m']} M VAE) + {args.encoder} "
          f"on {device} in {build_s:.1f} s; attention {attention}", file=sys.stderr)

    last_cost: dict[int, float] = {}  # batch -> seconds the last configuration of that batch took
    for batch in batches:
        for precision in precisions:
            for ck in checkpoints:
                row = {"batch": batch, "precision": precision, "checkpoint": ck}
                elapsed = time.perf_counter() - t_start
                guess = last_cost.get(batch) or (max(last_cost.values()) * batch if last_cost else 0.0)
                if elapsed + guess > budget:
                    row.update(status="skipped", error=f"time budget ({args.max_minutes} min)")
                else:
                    t_cfg = time.perf_counter()
                    try:
                        prior.configure(precision=precision, checkpoint=ck)
                        row.update(status="ok", **measure(prior, encoder, target, batch, args.rounds, device,
                                                          args.warmup))
                        row.update(derived(row, batch))
                    except Exception as exc:  # noqa: BLE001 - one failed configuration must not end the grid
                        row.update(status="oom" if _is_oom(exc) else "error",
                                   error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
                        if row["status"] == "error":
                            traceback.print_exc()
                    finally:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    last_cost[batch] = time.perf_counter() - t_cfg
                doc["rows"].append(row)
                doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
                # whole-process high-water mark (Linux: KiB); on CPU the only memory figure there is
                doc["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
                args.out.write_text(json.dumps(doc, indent=2) + "\n")
                print(f"  batch {batch} {precision} ckpt={ck}: {row['status']} "
                      f"{row.get('s_per_eval', '')} s/eval {row.get('peak_gib', '')} GiB", file=sys.stderr)
    print(table(doc))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
