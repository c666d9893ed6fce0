"""Quality and speed of a bundled diffusion prior (issue 3's figures, for the model card).

    python benchmarks/prior_quality.py --prior bundled:fashion-ddpm     # ~5 min on 2 CPU cores
    python benchmarks/prior_quality.py --prior bundled:emoji-ddpm
    python benchmarks/prior_quality.py --prior ~/.cache/probe/train/NAME/export --no-speed --out /tmp/q.json

fashion-ddpm: N unguided samples are classified by bundled:fashion-cnn (class coverage, each class's
share, mean top-class probability) and compared with N test images by the Fréchet distance on
fashion-cnn embeddings, beside the same distance between two disjoint test halves (the floor).
emoji-ddpm: Fréchet distance on EfficientNet-Lite0 embeddings between samples and the held-out emoji,
beside train-vs-held-out. Both: a sample grid PNG and images/s at 50 and 1000 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probe.datasets import FASHION_CLASSES, emoji, fashion_mnist
from probe.diffusion.priors import load_prior
from probe.diffusion.sampler import sample
from probe.diffusion.schedules import preset
from probe.metrics import frechet_distance
from probe.models.bundled import bundled_entry
from probe.models.registry import load_encoder
from probe.render.sheets import image_grid, save_png

RESULTS = Path(__file__).resolve().parent / "results"


def draw(prior, n: int, steps: int, batch: int, seed0: int = 0) -> tuple[torch.Tensor, float]:
    """n unguided samples in [0, 1] and the images/s it took (evenly spaced timesteps: the usual DDIM
    sampling, whatever spacing the decoding presets use)."""
    config = preset("none", steps=steps, spacing="linear")
    out, start = [], time.perf_counter()
    for i in range(0, n, batch):
        seeds = list(range(seed0 + i, seed0 + min(n, i + batch)))
        out.append(sample(prior, None, None, seeds, config).final_images)
    return torch.cat(out), n / (time.perf_counter() - start)


@torch.no_grad()
def embed(encoder, images: torch.Tensor, batch: int = 200) -> np.ndarray:
    return torch.cat([encoder(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)]).numpy()


def as_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="bundled:fashion-ddpm",
                    help="a bundled prior or a prior folder (e.g. a train_ddpm.py export) [bundled:fashion-ddpm]")
    ap.add_argument("--data", choices=("fashion", "emoji"), default=None,
                    help="what the prior was trained on [from its channels: 1 fashion, 3 emoji]")
    ap.add_argument("--out", type=Path, default=None, help="result JSON [results/prior_quality_<name>.json]")
    ap.add_argument("--no-speed", action="store_true", help="skip the images/s rows (1000 steps take minutes)")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100, help="sampling steps for the quality samples")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--speed-batch", type=int, default=16)
    ap.add_argument("--grid", type=Path, default=None, help="sample grid PNG [probe/bundled/<name>/samples.png]")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    prior = load_prior(args.prior, device="cpu")
    bundled = args.prior.startswith("bundled:")
    name = args.prior.split(":", 1)[1] if bundled else Path(args.prior).name
    data = args.data or ("fashion" if prior.channels == 1 else "emoji")
    samples, rate = draw(prior, args.n, args.steps, args.batch)
    result: dict = {"prior": args.prior, "n": args.n, "steps": args.steps, "torch_threads": torch.get_num_threads()}

    if data == "fashion":
        cnn = load_encoder("bundled:fashion-cnn", device="cpu")
        probs = torch.cat([cnn.classify(samples[i:i + 250]).softmax(1) for i in range(0, len(samples), 250)])
        share = np.bincount(probs.argmax(1).numpy(), minlength=10) / len(samples)
        x_test, _ = fashion_mnist("test")
        test = as_tensor(x_test)
        gen_f, test_a, test_b = embed(cnn, samples), embed(cnn, test[:args.n]), embed(cnn, test[5000:5000 + args.n])
        result.update({
            "class_share": {c: round(float(s), 4) for c, s in zip(FASHION_CLASSES, share)},
            "classes_covered": int((share > 0).sum()),
            "min_share": round(float(share.min()), 4), "max_share": round(float(share.max()), 4),
            "mean_top_probability": round(float(probs.max(1).values.mean()), 4),
            "frechet_samples_vs_test": round(frechet_distance(gen_f, test_a), 3),
            "frechet_test_half_vs_half": round(frechet_distance(test_a, test_b), 3),
            "feature": "bundled:fashion-cnn embedding (256-d)",
        })
    else:
        lite = load_encoder("bundled:efficientnet_lite0", device="cpu")
        held, train = as_tensor(emoji("test")), as_tensor(emoji("train"))
        gen_f, held_f = embed(lite, samples, 50), embed(lite, held, 50)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n]
        train_f = embed(lite, train[pick], 50)
        result.update({
            "frechet_samples_vs_heldout": round(frechet_distance(gen_f, held_f), 3),
            "frechet_train_vs_heldout": round(frechet_distance(train_f, held_f), 3),
            "heldout": len(held), "feature": "bundled:efficientnet_lite0 embedding (1280-d)",
        })

    result[f"images_per_second_{args.steps}_steps_batch_{args.batch}"] = round(rate, 2)
    if not args.no_speed:
        for steps in (50, 1000):
            _, r = draw(prior, args.speed_batch, steps, args.speed_batch, seed0=10_000)
            result[f"images_per_second_{steps}_steps"] = round(r, 3)
        result["speed_batch"] = args.speed_batch

    out = args.out or RESULTS / f"prior_quality_{name}.json"
    grid = args.grid or (bundled_entry(name, "prior").path / "samples.png" if bundled
                         else out.with_name(out.stem + "_samples.png"))
    cells = [[samples[r * 8 + c] for c in range(8)] for r in range(8)]
    save_png(image_grid(cells, title=f"{args.prior}: unguided samples, {args.steps} steps, seeds 0-63"), grid)
    result["grid"] = str(grid)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
