"""Does probe's realism score separate textured decodes from natural images on the shipped prior? (issue 10)

    python benchmarks/preset_search.py --device cpu --n 30 --out runs/textured \\
        --configs "balanced:weight=4,x0_cap=0,candidates=1,early_rounds=20,early_steps=3,late_rounds=40"
    python benchmarks/realism_auc.py --textured runs/textured --decoded runs/preset_search

Scores (``probe.naturalness``: the prior's denoising error at t/T = 0.01, 0.02, 0.05 over the median of its
unguided samples') for: real held-out Fashion-MNIST test images, the prior's unguided samples (``none`` of
the decoded folder), the shipped presets' decodes (every other configuration of that folder) and textured
decodes (the old w = 4 ``balanced``, which wrote full-frame stripes). Reports per group the median score
and the share above the off-manifold threshold, and the AUC of textured decodes against real + unguided
images and of each preset's decodes against real images (0.5: the score cannot tell them apart).
Writes ``benchmarks/results/realism_auc.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naturalness import images01  # noqa: E402

from probe.datasets import fashion_mnist  # noqa: E402
from probe.diffusion.priors import load_prior  # noqa: E402
from probe.naturalness import OFF_MANIFOLD, auc, denoising_error, off_manifold, realism_scores  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "realism_auc.json"


def summary(scores: np.ndarray) -> dict:
    return {"n": int(len(scores)), "median": float(np.median(scores)),
            "flagged": float(off_manifold(scores).mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--textured", type=Path, required=True, help="preset_search folder of textured decodes")
    ap.add_argument("--decoded", type=Path, required=True, help="preset_search folder with none.npz and presets")
    ap.add_argument("--prior", default="bundled:fashion-ddpm")
    ap.add_argument("--real", type=int, default=200, help="real test images scored [200]")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    prior = load_prior(args.prior, "cpu")
    reference = denoising_error(prior, images01(np.load(args.decoded / "none.npz")["final"]))

    def score(u8: np.ndarray) -> np.ndarray:
        return realism_scores(denoising_error(prior, images01(u8)), reference)

    test, _ = fashion_mnist("test")
    pick = np.random.default_rng(0).choice(len(test), args.real, replace=False)
    groups = {"real test images": score(test[pick]),
              "unguided samples": realism_scores(reference, reference)}
    for f in sorted(args.textured.glob("*.npz")):
        if f.name != "targets.npz":
            groups[f"textured: {f.stem}"] = score(np.load(f)["best"])
    presets = [f for f in sorted(args.decoded.glob("*.npz")) if f.name not in ("targets.npz", "none.npz")]
    for f in presets:
        groups[f"decoded: {f.stem}"] = score(np.load(f)["best"])
    natural = np.concatenate([groups["real test images"], groups["unguided samples"]])
    result = {"prior": args.prior, "threshold": OFF_MANIFOLD,
              "groups": {k: summary(v) for k, v in groups.items()}, "auc": {}}
    for k, v in groups.items():
        if k.startswith("textured"):
            result["auc"][f"{k} vs real + unguided"] = auc(v, natural)
        elif k.startswith("decoded"):
            result["auc"][f"{k} vs real"] = auc(v, groups["real test images"])
    for k, v in result["groups"].items():
        print(f"{k}: n {v['n']}, median {v['median']:.2f}, flagged {v['flagged']:.2f}")
    for k, v in result["auc"].items():
        print(f"AUC {k}: {v:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
