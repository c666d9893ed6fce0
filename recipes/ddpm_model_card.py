"""Write MODEL_CARD.md of a bundled DDPM prior from its training record and its measured quality.

    python recipes/train_ddpm.py --dataset fashion --export          # weights + training.json
    python benchmarks/prior_quality.py --prior bundled:fashion-ddpm  # benchmarks/results/prior_quality_*.json
    python recipes/ddpm_model_card.py fashion-ddpm                    # this: probe/bundled/fashion-ddpm/MODEL_CARD.md

The card is generated, not hand-written, so its figures are always the ones the benchmark measured on the
weights that ship.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "fashion": ("Fashion-MNIST train (60,000 images), Debian package `dataset-fashion-mnist` (MIT, Zalando SE); "
                "28×28 zero-padded to 32×32, 1 channel, random horizontal flips"),
    "emoji": ("the 3,786 colour emoji of npm `emoji-datasource-google` 16.0.0 (Apache-2.0, Google) at 64 px, "
              "alpha composited on white, resized to 32×32 RGB; every 10th file (sorted) held out: 3,408 train, "
              "378 held-out; random horizontal flips"),
}


def wall_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def fmt_quality(q: dict) -> list[str]:
    rows = []
    if "class_share" in q:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in q["class_share"].items())
        rows += [
            f"| classes predicted by fashion-cnn ({q['n']} samples) | {q['classes_covered']}/10 covered; "
            f"shares {q['min_share']:.1%}–{q['max_share']:.1%} (target 5–15 % each): {shares} |",
            f"| mean top-class probability | {q['mean_top_probability']:.3f} (target ≥ 0.8) |",
            f"| Fréchet distance, {q['feature']} | samples vs {q['n']} test images: "
            f"**{q['frechet_samples_vs_test']:.2f}**; test half vs half (floor): "
            f"{q['frechet_test_half_vs_half']:.2f} |",
        ]
    else:
        rows.append(f"| Fréchet distance, {q['feature']} | samples vs {q['heldout']} held-out emoji: "
                    f"**{q['frechet_samples_vs_heldout']:.2f}**; train vs held-out (floor): "
                    f"{q['frechet_train_vs_heldout']:.2f} |")
    rows.append(f"| sampling speed (CPU, {q['torch_threads']} thread(s), batch {q['speed_batch']}) | "
                f"{q['images_per_second_50_steps']:.2f} images/s at 50 steps, "
                f"{q['images_per_second_1000_steps']:.3f} images/s at 1000 steps |")
    return rows


def stage_text(st: dict) -> str:
    return (f"{st['steps']:,} steps, batch {st['batch_size']}, AdamW lr {st['lr']:g} "
            f"(warm-up {st.get('warmup') or 500} steps"
            f"{', cosine decay' if str(st.get('lr_schedule', '')).startswith('cosine') else ''}), "
            f"{st['hardware'].split(',')[0]}")


def training_rows(train: dict, dataset: str, name: str) -> list[str]:
    """The training, recipe and hardware rows; a prior trained in stages (``--init-from``) lists each stage."""
    stages = train.get("stages") or [train]
    commands = " then ".join(f"`{st.get('command') or f'python recipes/train_ddpm.py --dataset {dataset}'}`"
                             for st in stages)
    hardware = " then ".join(dict.fromkeys(str(st["hardware"]) for st in stages))
    cpu = any(str(st["hardware"]).startswith("CPU") for st in stages)
    return [
        f"| training | {'; then '.join(stage_text(st) for st in stages)}; {train['steps']:,} steps in all; "
        f"EMA {train['ema_decay']} (the EMA weights ship), "
        f"{'bf16 autocast' if any('bf16 autocast=True' in str(st['hardware']) for st in stages) else 'fp32'}, "
        f"seed {train['seed']} |",
        f"| recipe | {commands} (checkpoints under ~/.cache/probe/train/, resumed automatically; loss per step "
        f"in log.csv there, and for the shipped weights in `recipes/logs/{name}-loss.csv.gz`) |",
        f"| hardware, wall time | {hardware}; {wall_time(train['wall_seconds'])} of training in all"
        + (" (a shared 2-core machine)" if cpu else "") + " |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=["fashion-ddpm", "emoji-ddpm"])
    args = ap.parse_args()
    folder = ROOT / "probe" / "bundled" / args.name
    train = json.loads((folder / "training.json").read_text())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    qfile = ROOT / "benchmarks" / "results" / f"prior_quality_{args.name}.json"
    quality = json.loads(qfile.read_text()) if qfile.exists() else None
    size = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size / 1e6
    dataset = train["dataset"]
    lines = [
        f"# bundled:{args.name}",
        "",
        f"A small pixel-space DDPM on {'Fashion-MNIST' if dataset == 'fashion' else 'colour emoji'}: the "
        f"{'default' if dataset == 'fashion' else 'colour'} diffusion prior of `probe decode`. Stored in diffusers' "
        "own `DDPMPipeline` layout (`unet/` + `scheduler/`), so the loader that reads it also reads hub "
        "checkpoints such as `google/ddpm-celebahq-256`. Generated by `recipes/ddpm_model_card.py`.",
        "",
        "| | |",
        "|---|---|",
        f"| data | {DATA[dataset]} |",
        f"| architecture | diffusers `UNet2DModel`, {unet['in_channels']}×{unet['sample_size']}×{unet['sample_size']}, "
        f"widths {'/'.join(map(str, unet['block_out_channels']))}, {unet['layers_per_block']} ResNet layer per "
        f"block, attention at the lowest resolution, GroupNorm {unet['norm_num_groups']} |",
        f"| parameters | {train['params']:,} |",
        "| noise schedule | 1000 steps, `squaredcos_cap_v2`, ε-prediction, `clip_sample` |",
        *training_rows(train, dataset, args.name),
        f"| weights | `unet/diffusion_pytorch_model.safetensors` ({size:.1f} MB) |",
        "| licence | MIT (weights); data as above |",
    ]
    if quality:
        lines += fmt_quality(quality)
        lines += ["", f"Quality figures: `python benchmarks/prior_quality.py --prior bundled:{args.name} "
                  f"--steps {quality['steps']}` ({quality['n']} unguided samples, {quality['steps']} strided "
                  "steps); raw numbers in " f"`benchmarks/results/{qfile.name}`.", "",
                  "![unguided samples](samples.png)"]
    lines += ["", f"Limitations: a {train['params'] / 1e6:.1f}M-parameter model trained for "
              f"{wall_time(train['wall_seconds'])}; samples "
              "are small and some are not clearly any class. Decoded images inherit this: they show what the "
              "feature encodes as far as this prior can draw it. Training longer with the same recipe (it "
              "resumes) or pointing `--prior` at any diffusers DDPM checkpoint gives a stronger prior."]
    if (folder / "seed_pool.npz").is_file():
        lines += ["", "Seed pool: `seed_pool.npz` holds the prior's unguided samples of seeds 3,000,017 + p on the "
                  "presets' 50 timesteps (`python recipes/seed_pool.py --prior bundled:" + args.name + "`), so "
                  "`--schedule pooled` / `--pool N` need not draw them; retrained weights make it stale (ignored)."]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
