"""Recipe: train a bundled pixel-space DDPM prior (``bundled:fashion-ddpm`` or ``bundled:emoji-ddpm``).

    python recipes/train_ddpm.py --dataset fashion            # trains, resuming if a checkpoint exists
    python recipes/train_ddpm.py --dataset fashion --export   # writes the EMA weights into probe/bundled/
    python recipes/train_ddpm.py --dataset fashion --device cuda --batch-size 256 --max-minutes 6

On a GPU the step is bound by kernel launches, not arithmetic, so a larger batch costs almost nothing;
``--max-minutes`` stops (checkpointing and exporting) once a wall-clock budget is spent, which is how a
run fits a lent machine's time.

Long training spans sessions: the state (model, EMA, optimiser, RNG, step) is written atomically every
``--ckpt-every`` steps under ~/.cache/probe/train/<name>/ and picked up on the next start; each step's loss
goes to log.csv there. The exported prior is a diffusers ``DDPMPipeline`` folder (unet/ + scheduler/), the
same layout as hub checkpoints such as google/ddpm-celebahq-256, so one loader serves both.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from probe.datasets import CACHE_DIR, emoji, fashion_mnist
from probe.hardware import native_bf16

BUNDLED = Path(__file__).resolve().parents[1] / "probe" / "bundled"
DATASETS = {
    "fashion": {"name": "fashion-ddpm", "channels": 1},
    "emoji": {"name": "emoji-ddpm", "channels": 3},
}


def build_unet(channels: int, widths: tuple[int, ...] = (32, 64, 128), layers: int = 1) -> UNet2DModel:
    """The bundled priors' UNet; ``widths``/``layers`` scale it (the defaults are the shipped 2.7M model)."""
    return UNet2DModel(
        sample_size=32, in_channels=channels, out_channels=channels, norm_num_groups=8,
        block_out_channels=widths, layers_per_block=layers,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def load_data(dataset: str) -> torch.Tensor:
    """Training images in [-1, 1], NCHW float32."""
    if dataset == "fashion":
        x = torch.from_numpy(fashion_mnist("train")[0]).unsqueeze(1)
    else:
        x = torch.from_numpy(emoji("train")).permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1.0


def learning_rate(args: argparse.Namespace, step: int, run_fraction: float = 0.0) -> float:
    """Linear warm-up over ``--warmup`` steps, then constant or a cosine decay reaching 0 at ``--max-steps``
    (``cosine-time``: or when ``run_fraction``, the share of this run's ``--max-minutes`` spent, reaches 1)."""
    rate = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    if args.lr_schedule in ("cosine", "cosine-time"):
        done = step / max(1, args.max_steps)
        if args.lr_schedule == "cosine-time":
            done = max(done, run_fraction)
        rate *= 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return rate


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def training_command(argv: list[str]) -> str:
    """This run's command line for the model card, without where it exports to (--out)."""
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--out="):
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        kept.append(a)
    return " ".join(["python recipes/train_ddpm.py", *kept])


def hardware(args: argparse.Namespace, device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)}), bf16 autocast={args.bf16}"
    return f"CPU, {threads} torch thread(s), bf16 autocast={args.bf16}"


def stages_record(args: argparse.Namespace, stage: dict) -> dict:
    """Training totals and stages: a run started ``--init-from`` an exported prior continues its record, so the
    model card counts every step the shipped weights saw, not only this run's."""
    previous: list[dict] = []
    info = args.init_from / "training.json" if args.init_from is not None else None
    if info is not None and info.exists():
        prev = json.loads(info.read_text())
        previous = prev.get("stages") or [{k: prev.get(k) for k in stage}]  # a one-stage record
    stages = [*previous, stage]
    return {"steps": sum(st["steps"] or 0 for st in stages),
            "wall_seconds": sum(st["wall_seconds"] or 0 for st in stages),
            **({"init_from": str(args.init_from), "stages": stages} if previous else {})}


def export(ema: UNet2DModel, name: str, step: int, wall: float, args: argparse.Namespace, where: str,
           command: str) -> Path:
    out = args.out or BUNDLED / name
    ema.save_pretrained(out / "unet")
    build_scheduler().save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
         "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2) + "\n")
    stage = {"steps": step, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": args.lr_schedule,
             "warmup": args.warmup, "ema_decay": args.ema, "wall_seconds": round(wall), "hardware": where,
             "command": command}
    (out / "training.json").write_text(json.dumps(
        {"dataset": args.dataset, **stage, "seed": args.seed, "params": sum(p.numel() for p in ema.parameters()),
         **stages_record(args, stage)}, indent=2) + "\n")
    print(f"exported EMA weights at step {step} to {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--max-steps", type=int, default=60000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--lr-schedule", choices=("constant", "cosine", "cosine-time"), default="constant",
                    help="after the warm-up: constant; cosine decay to 0 at --max-steps (annealing a prior trained "
                         "at a constant rate, e.g. with --init-from); cosine-time: to 0 at --max-steps or at the "
                         "end of this run's --max-minutes, whichever comes first (a lent GPU's fixed budget) "
                         "[constant]")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... [cpu]")
    ap.add_argument("--max-minutes", type=float, default=0.0,
                    help="stop after this much wall-clock training in this run, then export (0: no limit)")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast [on where the device has bf16 instructions: Ampere+ GPUs, CPUs with "
                         "AVX-512 bf16 or AMX; elsewhere it is emulated, 11x slower measured]")
    ap.add_argument("--widths", default="32,64,128", help="UNet channel widths per resolution [32,64,128]")
    ap.add_argument("--layers", type=int, default=1, help="ResNet layers per UNet block [1]")
    ap.add_argument("--name", default=None,
                    help="checkpoint folder name under ~/.cache/probe/train/ [the dataset's bundled name]")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start a new run from an exported prior folder (its unet/), e.g. probe/bundled/fashion-ddpm,"
                         " instead of random init; ignored when a checkpoint exists (that run resumes)")
    ap.add_argument("--export", action="store_true", help="only write the current EMA weights to probe/bundled")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.bf16 is None:
        args.bf16 = native_bf16(device)
    spec = DATASETS[args.dataset]
    name = args.name or spec["name"]
    workdir = CACHE_DIR / "train" / name
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.init_from is not None and not (workdir / "ckpt.pt").exists():
        model = UNet2DModel.from_pretrained(args.init_from / "unet").to(device)
        print(f"initialised from {args.init_from}")
    else:
        widths = tuple(int(w) for w in args.widths.split(","))
        model = build_unet(spec["channels"], widths, args.layers).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    sched = build_scheduler()
    step, wall = 0, 0.0
    ckpt = workdir / "ckpt.pt"
    trained_threads, trained_on, trained_by = None, None, None
    command = training_command(sys.argv[1:])
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())
        step, wall = state["step"], state["wall"]
        trained_threads = state.get("threads")
        trained_on, trained_by = state.get("hardware"), state.get("command")
        print(f"resumed {name} at step {step} ({wall / 3600:.2f} h trained)")
    if args.export:  # record the hardware training ran on (from the checkpoint), not this process's
        export(ema, name, step, wall, args,
               trained_on or hardware(args, device, trained_threads or torch.get_num_threads()),
               trained_by or command)
        return

    where = hardware(args, device, torch.get_num_threads())
    data = load_data(args.dataset).to(device)
    acp = sched.alphas_cumprod.to(device)
    run_start = time.time()
    budget_end = run_start + args.max_minutes * 60 if args.max_minutes > 0 else math.inf
    log = open(workdir / "log.csv", "a")
    losses: list[torch.Tensor] = []  # kept on the device until a checkpoint: no sync per step
    t0 = time.time()
    stop = False
    while step < args.max_steps and not stop:
        # every random draw comes from the one CPU generator, so a run is the same on any device
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x0 = data[idx.to(device)]
        flip = (torch.rand(args.batch_size, generator=gen) < 0.5).to(device)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = model(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        for g in opt.param_groups:
            g["lr"] = learning_rate(args, step, (time.time() - run_start) / (args.max_minutes * 60)
                                    if args.max_minutes > 0 else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        losses.append(loss.detach())
        stop = time.time() >= budget_end
        if step % args.ckpt_every == 0 or step == args.max_steps or stop:
            wall += time.time() - t0
            t0 = time.time()
            first = step - len(losses) + 1
            log.writelines(f"{first + k},{v:.5f}\n" for k, v in enumerate(torch.stack(losses).tolist()))
            log.flush()
            losses.clear()
            save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "gen": gen.get_state(), "step": step, "wall": wall,
                         "threads": torch.get_num_threads(), "hardware": where, "command": command}, ckpt)
            recent = np.loadtxt(workdir / "log.csv", delimiter=",", ndmin=2)[-args.ckpt_every:, 1].mean()
            print(f"step {step} loss {recent:.4f} wall {wall / 3600:.2f} h", flush=True)
    export(ema, name, step, wall, args, where, command)


if __name__ == "__main__":
    main()
