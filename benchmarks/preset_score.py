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
from naturalness import images01, load_judges, naturalness_figures  # noqa: E402

from probe.diffusion.priors import load_prior  # noqa: E402
from probe.naturalness import denoising_error  # noqa: E402

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


def score_dir(folder: Path, prior_spec: str, names: list[str] | None = None, finals: bool = False,
              subset_from: str | None = None) -> dict:
    """Score every configuration in ``folder`` (or ``names``); with ``subset_from`` only on the targets that
    configuration was decoded on (``preset_search.py --per-class``), so that every row of the table is
    measured on the same targets as it."""
    tg = np.load(folder / "targets.npz")
    labels, targets, index = tg["labels"], tg["images"], tg["index"]
    labels = labels if len(labels) else None
    none = np.load(folder / "none.npz")["best"]
    judges = load_judges() if labels is not None else None
    prior = load_prior(prior_spec, "cpu")
    ref_err = denoising_error(prior, images01(none))  # the reference: all the unguided samples
    subset = None
    if subset_from:
        subset = np.load(folder / f"{subset_from}.npz")["subset"]
        if finals:
            raise SystemExit("--finals is not supported with --subset")
    rows = []
    files = [folder / f"{n}.npz" for n in names] if names else sorted(folder.glob("*.npz"))
    for path in files:
        if path.name == "targets.npz" or not path.exists():
            continue
        z = np.load(path)
        own = z["subset"] if "subset" in z else None
        if own is not None and (subset is None or not np.array_equal(own, subset)):
            print(f"{path.name}: skipped (decoded on a subset of the targets; score it with --subset)", file=sys.stderr)
            continue
        meta = json.loads(str(z["meta"]))
        for which in ("best", "final") if finals and meta["evaluations_per_image"] > 0 else ("best",):
            rows.append(score_row(z, meta, which, labels, targets, index, none, prior, ref_err, judges, folder,
                                  subset))
    n = len(targets) if subset is None else len(subset)
    return {"folder": str(folder), "prior": prior_spec, "n_targets": int(n),
            "subset": None if subset is None else subset.tolist(), "target": TARGET, "rows": rows}


def score_row(z, meta: dict, which: str, labels, targets, index, none, prior, ref_err, judges, folder: Path,
              subset: np.ndarray | None = None) -> dict:
    """One configuration's figures for its best images (the decoder's output) or its chains' final images.

    With ``subset`` the row is restricted to those targets (the npz holds either all targets or exactly them)."""
    images = z[which]
    per_distance, ranks = z[f"{which}_distance"], z["rank"] if "rank" in z else None
    if which == "best":
        distance, r1 = meta["mean_distance"], meta["retrieval_at_1"]
        name = meta["name"]
    else:  # the final images' retrieval needs their features: computed here, like preset_search does
        distance, r1 = float(np.mean(z["final_distance"])), final_retrieval(images, folder)
        name = meta["name"] + " [final image]"
    if subset is not None:
        if "subset" not in z:  # a row decoded on all targets: keep the subset's images, distances and ranks
            images, per_distance = images[subset], per_distance[subset]
            ranks = ranks[subset]
        distance, r1 = float(np.mean(per_distance)), float((ranks == 0).mean())
        labels, targets, index, none = labels[subset], targets[subset], index[subset], none[subset]
    nat = naturalness_figures(images, labels, targets, index, none, prior, ref_err, judges)
    evals = meta["evaluations_per_image"]
    row = {"name": name, "config": meta["config"], "output": which, "n": int(len(images)),
           "mean_distance": distance, "retrieval_at_1": r1,
           "evaluations_per_image": evals, "seconds_per_image": meta["seconds_per_image"],
           "device": meta.get("device"),  # absent from folders decoded before it was recorded
           "fewer_than_paper": PAPER_EVALUATIONS / evals if evals > 0 else None,
           **{k: v for k, v in nat.items() if k not in ("realism", "judges_correct", "nn_distance")},
           "per_image": {"realism": nat["realism"], "judges_correct": nat.get("judges_correct"),
                         "nn_distance": nat["nn_distance"], "distance": np.asarray(per_distance).tolist()}}
    row["verdict"] = verdict(row) if evals > 0 and labels is not None else None
    jr = "–" if row["judge_ratio"] is None else f"{row['judge_ratio']:.2f}"
    print(f"{row['name']}: judges {jr}, FD x{row['fd_ratio']:.2f}, NN x{row['nn_ratio']:.2f}, realism "
          f"{row['realism_median']:.2f}, distance {row['mean_distance']:.3f}, r@1 {row['retrieval_at_1']:.2f}",
          file=sys.stderr, flush=True)
    return row


_GALLERY: dict[str, tuple] = {}


def final_retrieval(images: np.ndarray, folder: Path) -> float:
    """retrieval@1 of decoded images among the targets + the 1,000-image gallery of decode_fidelity.py."""
    from decode_fidelity import as_tensor, choose_images, features

    from probe.metrics import retrieval_rank
    from probe.models.registry import load_encoder

    key = str(folder)
    if key not in _GALLERY:
        tg = np.load(folder / "targets.npz")
        enc = load_encoder("bundled:fashion-cnn", device="cpu")
        chosen = choose_images("fashion", len(tg["images"]), 1000, 0)
        assert np.array_equal(chosen["targets"], tg["images"]), "targets differ from decode_fidelity's choice"
        _GALLERY[key] = (enc, features(enc, as_tensor(chosen["targets"])), features(enc, as_tensor(chosen["gallery"])))
    enc, tgt_f, gal_f = _GALLERY[key]
    dec_f = features(enc, images01(images))
    return float((retrieval_rank(dec_f, tgt_f, gal_f) == 0).mean())


def table(result: dict) -> str:
    lines = ["| configuration | evals | × fewer | distance | r@1 | judges (÷ real) | FD ÷ unguided | NN ratio | "
             "realism (median) | flagged | passes |", "|" + "---|" * 11]
    for r in result["rows"]:
        few = f"{r['fewer_than_paper']:.1f}" if r["fewer_than_paper"] else "–"
        ok = "–" if r["verdict"] is None else ("yes" if r["verdict"]["pass"] else "no")
        jr = "–" if r["judge_ratio"] is None else f"{r['judge_ratio']:.2f}"
        lines.append(f"| `{r['name']}` | {r['evaluations_per_image']:.0f} | {few} | {r['mean_distance']:.3f} | "
                     f"{r['retrieval_at_1']:.2f} | {jr} | {r['fd_ratio']:.2f} | "
                     f"{r['nn_ratio']:.2f} | {r['realism_median']:.2f} | {r['off_manifold_share']:.2f} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a preset_search.py output folder")
    ap.add_argument("--prior", default="bundled:fashion-ddpm")
    ap.add_argument("--only", default=None, help="configuration file slugs to score, ;-separated [all]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--finals", action="store_true", help="also score each chain's final image")
    ap.add_argument("--subset", default=None,
                    help="score every row on the targets this configuration (slug) was decoded on "
                         "(preset_search.py --per-class) [all targets]")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = [s for s in args.only.split(";") if s] if args.only else None
    result = score_dir(args.folder, args.prior, names, args.finals, args.subset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
