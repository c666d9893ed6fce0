"""Score the configurations that ``preset_search.py`` decoded, on both axes at once (issue 10).

    python benchmarks/preset_score.py runs/preset_search --out benchmarks/results/preset_search.json

Per configuration (``OUT/<slug>.npz``, the unguided ``none.npz`` as the reference):

  faithfulness  mean feature distance, retrieval@1 among 1,000 held-out features, evaluations per image and
                how many times fewer than the paper's 12,960
  naturalness   independent judges (``naturalness.py``: an MLP, HOG + logistic regression, 5-NN on pixels;
                none of them ever guides) — their accuracy on the decodes against the target's true class,
                divided by their accuracy on the real target images; Fréchet distance on the MLP's 64-d
                features to real held-out images, divided by the unguided samples' (matched N); mean
                distance to the nearest training image, divided by real held-out images' ("NN ratio");
                probe's own prior-based realism score (``probe.naturalness``, relative to the unguided
                samples) and the share of decodes it flags as off-manifold
  verdict       issue 10's target: judge ratio ≥ 0.9, NN ratio ≤ 1.2, FD ≤ 1.5× unguided, retrieval@1 ≥
                0.95, ≥ 20× fewer evaluations than the paper
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naturalness import load_judges, score_images  # noqa: E402

from probe.diffusion.priors import load_prior  # noqa: E402
from probe.naturalness import denoising_error, off_manifold, realism_scores  # noqa: E402

PAPER_EVALUATIONS = 12960
TARGET = {"judge_ratio": 0.9, "nn_ratio": 1.2, "fd_ratio": 1.5, "retrieval_at_1": 0.95, "fewer": 20.0}


def verdict(row: dict) -> dict:
    checks = {
        "judge_ratio": row["judge_ratio"] >= TARGET["judge_ratio"],
        "nn_ratio": row["nn_ratio"] <= TARGET["nn_ratio"],
        "fd_ratio": row["fd_ratio"] <= TARGET["fd_ratio"],
        "retrieval_at_1": row["retrieval_at_1"] >= TARGET["retrieval_at_1"],
        "fewer": (row["fewer_than_paper"] or 0) >= TARGET["fewer"],
    }
    return {"checks": checks, "pass": all(checks.values())}


def score_dir(folder: Path, prior_spec: str, names: list[str] | None = None) -> dict:
    tg = np.load(folder / "targets.npz")
    labels, targets, index = tg["labels"], tg["images"], tg["index"]
    none = np.load(folder / "none.npz")["best"]
    judges = load_judges()
    prior = load_prior(prior_spec, "cpu")
    as01 = lambda u8: torch.from_numpy(u8).float() / 255  # noqa: E731
    ref_err = denoising_error(prior, as01(none))
    real_err = denoising_error(prior, as01(targets[:, None] if targets.ndim == 3 else targets))
    rows = []
    files = [folder / f"{n}.npz" for n in names] if names else sorted(folder.glob("*.npz"))
    for path in files:
        if path.name == "targets.npz" or not path.exists():
            continue
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        best = z["best"]
        sc = score_images(best, labels, targets=targets, unguided=none, exclude_indices=index, judges=judges)
        real = realism_scores(denoising_error(prior, as01(best)), ref_err)
        evals = meta["evaluations_per_image"]
        row = {"name": meta["name"], "config": meta["config"], "n": int(len(best)),
               "mean_distance": meta["mean_distance"], "retrieval_at_1": meta["retrieval_at_1"],
               "evaluations_per_image": evals,
               "fewer_than_paper": PAPER_EVALUATIONS / evals if evals > 0 else None,
               "judge_accuracy": sc["judge_accuracy"], "judge_accuracy_real_targets": sc["judge_accuracy_real_targets"],
               "judge_ratio": sc["judge_accuracy_ratio"]["mean"],
               "fd": sc["fd"], "fd_ratio": sc["fd"]["decoded"] / sc["fd"]["unguided"],
               "nn_ratio": sc["nn"]["ratio"],
               "realism_mean": float(np.mean(real)), "realism_median": float(np.median(real)),
               "off_manifold_share": float(off_manifold(real).mean()),
               "per_image": {"realism": real.tolist(), "judges_correct": sc["per_image"]["judges_correct"],
                             "nn_distance": sc["per_image"]["nn_distance"],
                             "best_distance": z["best_distance"].tolist()}}
        row["verdict"] = verdict(row) if evals > 0 else None
        rows.append(row)
        print(f"{row['name']}: judges {row['judge_ratio']:.2f}, FD x{row['fd_ratio']:.2f}, "
              f"NN x{row['nn_ratio']:.2f}, realism {row['realism_median']:.2f}, distance "
              f"{row['mean_distance']:.3f}, r@1 {row['retrieval_at_1']:.2f}", file=sys.stderr, flush=True)
    return {"folder": str(folder), "prior": prior_spec, "n_targets": int(len(labels)),
            "realism_real_targets": realism_scores(real_err, ref_err).tolist(), "target": TARGET, "rows": rows}


def table(result: dict) -> str:
    lines = ["| configuration | evals | × fewer | distance | r@1 | judges (÷ real) | FD ÷ unguided | NN ratio | "
             "realism (median) | flagged | passes |", "|" + "---|" * 11]
    for r in result["rows"]:
        few = f"{r['fewer_than_paper']:.1f}" if r["fewer_than_paper"] else "–"
        ok = "–" if r["verdict"] is None else ("yes" if r["verdict"]["pass"] else "no")
        lines.append(f"| `{r['name']}` | {r['evaluations_per_image']:.0f} | {few} | {r['mean_distance']:.3f} | "
                     f"{r['retrieval_at_1']:.2f} | {r['judge_ratio']:.2f} | {r['fd_ratio']:.2f} | "
                     f"{r['nn_ratio']:.2f} | {r['realism_median']:.2f} | {r['off_manifold_share']:.2f} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a preset_search.py output folder")
    ap.add_argument("--prior", default="bundled:fashion-ddpm")
    ap.add_argument("--only", default=None, help="configuration file slugs to score, ;-separated [all]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = [s for s in args.only.split(";") if s] if args.only else None
    result = score_dir(args.folder, args.prior, names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
