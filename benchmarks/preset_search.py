"""Decode the same held-out targets with many guidance configurations and keep the images (issue 10).

    python benchmarks/preset_search.py --device cuda --n 100 --configs benchmarks/preset_grid.txt \\
        --out runs/preset_search                       # on a GPU: ~10 s per 600-evaluation config
    python benchmarks/preset_search.py --n 4 --configs "fast;none" --out /tmp/ps   # a quick CPU check

Feature distance alone tuned the old presets toward adversarial textures, so this benchmark only
*decodes*: it writes, per configuration, the best (and final) 8-bit images, their distances, retrieval
ranks and evaluation counts to ``OUT/<slug>.npz``; ``benchmarks/preset_score.py`` then scores every
configuration on both axes (distance/retrieval and the independent naturalness judges) on any machine.
Targets, gallery and seeds are those of ``decode_fidelity.py`` (target i is decoded with seed i), so the
rows are comparable with its table. ``--workers W`` runs W processes over the configurations (a small
pixel prior leaves a GPU mostly idle at batch 100).

A configuration is a preset name or ``BASE:key=val,...`` (as ``decode_fidelity.py --extra``); the
``--configs`` argument is a ;-separated list or a file with one per line (``#`` comments).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_fidelity import as_tensor, choose_images, features, log, parse_extra  # noqa: E402

from probe.diffusion.priors import load_prior  # noqa: E402
from probe.diffusion.sampler import sample  # noqa: E402
from probe.diffusion.schedules import PRESETS, GuidanceConfig  # noqa: E402
from probe.metrics import retrieval_rank  # noqa: E402
from probe.models.registry import load_encoder  # noqa: E402
from probe.starts import chain_starts  # noqa: E402


def slug(name: str) -> str:
    """A file-name-safe name of a configuration string."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:150]


def read_configs(text: str) -> list[GuidanceConfig]:
    path = Path(text)
    items = path.read_text().splitlines() if path.is_file() else text.split(";")
    items = [line.split("#", 1)[0].strip() for line in items]
    return [PRESETS[i].replace(name=i) if i in PRESETS else parse_extra(i) for i in items if i]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return torch.round(images.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


def per_class_subset(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` targets of each class (in target order): a class-balanced subset for the
    configurations too costly to decode on all targets (the paper's 12,960 evaluations)."""
    labels = np.asarray(labels)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in np.unique(labels)]))


def run_config(prior, encoder, targets: torch.Tensor, tgt_f: np.ndarray, gal_f: np.ndarray, config: GuidanceConfig,
               batch: int, out: Path, subset: np.ndarray | None = None) -> dict:
    chosen = np.arange(len(targets)) if subset is None else np.asarray(subset)
    n = len(chosen)
    # --batch-size bounds the chains per network call, candidates included (as decode); the sampler's queue keeps
    # every call full across all the targets, so they go in one stream
    from probe.diffusion.memory import auto_chains

    chains = min(batch, auto_chains(prior, encoder))
    seeds = [int(i) for i in chosen]  # target i is always decoded with seed i
    starts = chain_starts(prior, encoder, config, targets[seeds].numpy(), [0] * n, 1, chains)  # pool / data start
    res = sample(prior, encoder, targets[seeds], seeds, config, max_chains=chains, **starts.sampler_kwargs())
    best_u8, final_u8 = to_uint8(res.best_images), to_uint8(res.final_images)
    bd, fd = res.best_distance.tolist(), res.final_distance.tolist()
    ev, bs = res.evaluations.tolist(), res.best_step.tolist()
    seconds = res.seconds
    dec_f = features(encoder, torch.from_numpy(best_u8).float().div(255))
    ranks = retrieval_rank(dec_f, tgt_f[chosen], gal_f)
    row = {"name": config.name, "config": config.to_dict(), "n": n, "seconds": seconds,
           "seconds_per_image": seconds / n, "mean_distance": float(np.mean(bd)),
           "retrieval_at_1": float((ranks == 0).mean()), "evaluations_per_image": float(np.mean(ev)),
           "analytic_evaluations": config.evaluations(prior.num_train_timesteps), "device": str(prior.device)}
    np.savez_compressed(out / f"{slug(config.name)}.npz", best=best_u8, final=final_u8,
                        best_distance=np.asarray(bd), final_distance=np.asarray(fd), rank=ranks,
                        evaluations=np.asarray(ev), best_step=np.asarray(bs), meta=json.dumps(row),
                        **({} if subset is None else {"subset": chosen}))
    return row


def worker(rank: int, world: int, args: argparse.Namespace, configs: list[GuidanceConfig]) -> None:
    torch.manual_seed(0)
    device = args.device
    prior = load_prior(args.prior, device=device)
    encoder = load_encoder(args.encoder, device=device)
    chosen = choose_images("fashion" if prior.channels == 1 else "emoji", args.n, args.gallery, args.seed)
    tgt_f = features(encoder, as_tensor(chosen["targets"]))
    gal_f = features(encoder, as_tensor(chosen["gallery"]))
    targets = torch.from_numpy(tgt_f)
    subset = None
    if args.per_class:
        if not chosen["target_label"]:
            raise SystemExit("--per-class needs class labels (Fashion-MNIST targets)")
        subset = per_class_subset(np.asarray(chosen["target_label"]), args.per_class)
    out = Path(args.out)
    if rank == 0:
        np.savez_compressed(out / "targets.npz", images=chosen["targets"],
                            labels=np.asarray(chosen["target_label"] if chosen["target_label"] else []),
                            index=np.asarray(chosen["target_index"]))
    for k, config in enumerate(configs):
        if k % world != rank:
            continue
        path = out / f"{slug(config.name)}.npz"
        if path.exists() and not args.overwrite:
            log(f"[{rank}] {config.name}: kept {path}")
            continue
        t0 = time.perf_counter()
        try:
            row = run_config(prior, encoder, targets, tgt_f, gal_f, config, args.batch_size, out, subset)
        except Exception as exc:  # one bad configuration must not lose the others
            log(f"[{rank}] {config.name}: FAILED {type(exc).__name__}: {exc}")
            continue
        log(f"[{rank}] {config.name}: {time.perf_counter() - t0:.1f} s, distance {row['mean_distance']:.3f}, "
            f"retrieval@1 {row['retrieval_at_1']:.2f}, {row['evaluations_per_image']:.0f} evaluations")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="bundled:fashion-ddpm")
    ap.add_argument("--encoder", default="bundled:fashion-cnn")
    ap.add_argument("--configs", required=True, help="configurations separated by ;, or a file with one per line")
    ap.add_argument("--n", type=int, default=100, help="targets (class-balanced held-out) [100]")
    ap.add_argument("--per-class", type=int, default=0,
                    help="decode only the first K targets of each class (of the --n; the paper preset) [all]")
    ap.add_argument("--gallery", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1600,
                    help="chains run side by side, candidates included (targets per call: this ÷ candidates) [1600]")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    configs = read_configs(args.configs)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    log(f"{len(configs)} configurations x {args.n} targets on {args.device}, {args.workers} worker(s)")
    if args.workers == 1:
        worker(0, 1, args, configs)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, args.workers, args, configs)) for r in range(args.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
