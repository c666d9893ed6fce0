"""Issue 5's quality check: do interpolation paths and principal-component walks decode sensibly?

    python benchmarks/walk_quality.py                      # fashion-ddpm + fashion-cnn, fast preset
    python benchmarks/walk_quality.py --pairs 0-9,1-7 --points 9 --samples 4

Runs the real workflows through the Python API (the functions the CLI commands call) on the bundled models:

interpolation  For each class pair (A, B), the Fashion-MNIST test image of A (and of B) whose fashion-cnn
               embedding is nearest its class mean among correctly classified images is extracted, and
               ``probe interpolate`` decodes the linear path between the two embeddings (``--points``
               points, ``--samples`` strips with shared seeds). Each decoded image is classified by
               fashion-cnn. A strip *switches once and monotonically* when its predicted classes read
               A…A B…B: it starts at A, ends at B, only A and B occur and the class changes exactly once.
               Also reported: Spearman correlation of P(B) with the path position, and the decoder's
               distances along the path against its distances at the endpoints (real features: the
               decoder's usual range).
perturb        PCA of 1,000 test embeddings (cached in the store by ``probe perturb``), then
               ``probe perturb CENTRE --components 1`` over ``--scales``: ``--centre medoid`` (the set's
               row nearest its mean, a real image's feature; default) or ``mean`` (no image's feature:
               its decodes are hybrids of every class). Every scalar attribute of
               ``probe.persistence.attributes`` is measured on the decoded images; per sample, the Spearman
               correlation of the attribute with the scale, averaged over samples. The attribute with
               the largest mean |ρ| is the one PC1 changes monotonically.

naturalness    Every decoded image also gets the independent judges' class (``naturalness.py``: an MLP, HOG +
               logistic regression, 5-NN on pixels; never used for guidance; majority vote): a strip that
               switches once under fashion-cnn but not under the judges changed the network's verdict, not
               the garment. Also per walk: probe's realism score (manifest ``naturalness``; median and the
               share flagged off-manifold) and the nearest-training-image ratio (decoded vs real test images).

Writes ``benchmarks/results/walk_quality.json`` and copies strip/grid PNGs to ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

import probe
from probe.datasets import FASHION_CLASSES, fashion_mnist, fashion_slug
from probe.manifest import Manifest, SampleRecord
from probe.models.registry import load_encoder
from probe.persistence.attributes import get_attributes, is_grey
from probe.persistence.scoring import grey_collapse
from probe.store import FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naturalness import load_judges, nn_ratio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def slug(c: int) -> str:
    return f"{c}-{fashion_slug(c)}"


def embed(cnn, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, predicted classes) of uint8 [N, H, W] images."""
    feats, preds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).float()[:, None] / 255.0
            feats.append(cnn(x).numpy())
            preds.append(cnn.classify(x).softmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def classify_files(cnn, out: Path, rels: list[str]) -> np.ndarray:
    imgs = np.stack([np.asarray(Image.open(out / r).convert("L")) for r in rels])
    return embed(cnn, imgs)[1]


def judge_classes(judges, images: np.ndarray) -> list[int]:
    """Majority class of the independent judges per image (ties: the MLP judge's class)."""
    preds = judges.predict(images)
    votes = np.stack([preds[k] for k in ("mlp", "hog-logreg", "knn-pixels")], 1)
    out = []
    for row in votes:
        vals, counts = np.unique(row, return_counts=True)
        out.append(int(vals[counts.argmax()]) if counts.max() > 1 else int(row[0]))
    return out


def naturalness_of(records: list[SampleRecord], out: Path, real: np.ndarray) -> dict:
    """Realism scores from the manifest and the NN ratio of a walk's decoded images."""
    nat = np.array([r.naturalness for r in records if r.naturalness is not None], dtype=float)
    imgs = np.stack([np.asarray(Image.open(out / r.image).convert("L")) for r in records])
    return {"realism_median": float(np.median(nat)) if nat.size else None,
            "off_manifold_share": float(np.mean([bool(r.off_manifold) for r in records])),
            "nn_ratio": nn_ratio(imgs, real)["ratio"]}


def switches_once(seq: list[int], a: int, b: int) -> bool:
    changes = sum(1 for x, y in zip(seq, seq[1:]) if x != y)
    return seq[0] == a and seq[-1] == b and set(seq) <= {a, b} and changes == 1


def interpolation(args, cnn, judges, x: np.ndarray, exemplars: dict[int, int], work: Path) -> dict:
    img_dir = work / "exemplars"
    for c, i in exemplars.items():
        (img_dir / slug(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(img_dir / slug(c) / f"test{i:05d}.png")
    store = work / "exemplars.h5"
    probe.extract("bundled:fashion-cnn", img_dir, out=store, labels="parent", overwrite=True)
    with FeatureStore(store) as fs:  # rows by class folder (extract's order is its own)
        paths = fs.group().paths
    rows = {int(Path(p).parent.name.split("-")[0]): r for r, p in enumerate(paths)}

    pairs = [tuple(int(v) for v in token.split("-")) for token in args.pairs.split(",")]
    strips_ok, strips_all, per_pair = 0, 0, []
    for a, b in pairs:
        out = work / f"interpolate-{a}-{b}"
        t0 = time.perf_counter()
        probe.interpolate(None, f"{store}:{rows[a]}", f"{store}:{rows[b]}", points=args.points, samples=args.samples,
                          schedule=args.schedule, batch_size=args.batch_size, out=out, overwrite=True)
        seconds = time.perf_counter() - t0
        summary = json.loads((out / "path.json").read_text())
        records = Manifest.read(out).cells()
        ok, ok_judges, rhos, seqs, jseqs = [], [], [], [], []
        for s in range(args.samples):
            rels = [records[(p["target_id"], s)].image for p in summary["points"]]
            probs = classify_files(cnn, out, rels)
            seq = [int(v) for v in probs.argmax(1)]
            seqs.append(seq)
            ok.append(switches_once(seq, a, b))
            jseq = judge_classes(judges, np.stack([np.asarray(Image.open(out / r).convert("L")) for r in rels]))
            jseqs.append(jseq)
            ok_judges.append(switches_once(jseq, a, b))
            rhos.append(float(spearmanr(summary["positions"], probs[:, b]).statistic))
        best = np.array(summary["best_distance"], dtype=float)  # [samples, points]
        rel = np.array([[records[(p["target_id"], s)].relative_distance for p in summary["points"]]
                        for s in range(args.samples)], dtype=float)
        ends = np.concatenate([best[:, 0], best[:, -1]])
        inner = best[:, 1:-1].ravel()
        per_pair.append({
            "a": FASHION_CLASSES[a], "b": FASHION_CLASSES[b], "distance_a_b": summary["distance_a_b"],
            "predicted_classes": [[FASHION_CLASSES[c] for c in seq] for seq in seqs],
            "switches_once": ok, "share_switching_once": float(np.mean(ok)),
            "judge_classes": [[FASHION_CLASSES[c] for c in seq] for seq in jseqs],
            "switches_once_judges": ok_judges, "share_switching_once_judges": float(np.mean(ok_judges)),
            **naturalness_of(list(records.values()), out, x),
            "spearman_p_b_vs_t": rhos, "median_distance_endpoints": float(np.median(ends)),
            "median_distance_interior": float(np.median(inner)),
            "max_distance_interior": float(inner.max()),
            "median_relative_distance_endpoints": float(np.median(np.concatenate([rel[:, 0], rel[:, -1]]))),
            "median_relative_distance_interior": float(np.median(rel[:, 1:-1])),
            "interior_over_endpoint_median": float(np.median(inner) / np.median(ends)),
            "seconds": round(seconds, 1), "out": str(out),
        })
        strips_ok += sum(ok)
        strips_all += len(ok)
        log(f"{FASHION_CLASSES[a]} → {FASHION_CLASSES[b]}: {sum(ok)}/{len(ok)} strips switch once; "
            f"ρ(P(B), t) = {np.mean(rhos):.2f}; interior/endpoint "
            f"distance {per_pair[-1]['interior_over_endpoint_median']:.2f}")
    return {"pairs": per_pair, "share_switching_once": strips_ok / max(1, strips_all),
            "share_switching_once_judges": float(np.mean([v for p in per_pair for v in p["switches_once_judges"]])),
            "realism_median": float(np.median([p["realism_median"] for p in per_pair])),
            "off_manifold_share": float(np.mean([p["off_manifold_share"] for p in per_pair])),
            "nn_ratio": float(np.mean([p["nn_ratio"] for p in per_pair])),
            "mean_spearman_p_b_vs_t": float(np.mean([np.mean(p["spearman_p_b_vs_t"]) for p in per_pair])),
            "median_interior_over_endpoint": float(np.median([p["interior_over_endpoint_median"]
                                                              for p in per_pair]))}


def perturbation(args, x: np.ndarray, work: Path) -> dict:
    rng = np.random.default_rng(1)
    img_dir = work / "set"
    idx = rng.choice(len(x), args.set_size, replace=False)
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in idx:
        Image.fromarray(x[i]).save(img_dir / f"test{i:05d}.png")
    store = work / "set.h5"
    probe.extract("bundled:fashion-cnn", img_dir, out=store, overwrite=True)
    out = work / "perturb-pc1"
    scales = [float(s) for s in args.scales.split(",")]
    t0 = time.perf_counter()
    probe.perturb(None, args.centre, store, components=[1], scales=args.scales, samples=args.samples,
                  schedule=args.schedule, batch_size=args.batch_size, out=out, overwrite=True)
    seconds = time.perf_counter() - t0
    summary = json.loads((out / "perturb.json").read_text())
    cells = summary["cells"]
    scalar = [a for a in get_attributes() if a.kind == "continuous"]
    pixels = {c["image"]: np.asarray(Image.open(out / c["image"]).convert("RGB")) for c in cells if c["image"]}
    if all(is_grey(im) for im in pixels.values()):  # colour repeats brightness/contrast, as in probe compare
        scalar, _ = grey_collapse(scalar)
    by_attr: dict[str, list[float]] = {a.name: [] for a in scalar}
    for s in range(args.samples):
        rows = sorted((c for c in cells if c["sample"] == s), key=lambda c: c["scale"])
        imgs = [pixels[c["image"]] / 255.0 for c in rows]
        for a in scalar:
            vals = [float(v) for v in a.measure(imgs)]
            rho = np.nan if np.ptp(vals) == 0 else spearmanr([c["scale"] for c in rows], vals).statistic
            by_attr[a.name].append(0.0 if not np.isfinite(rho) else float(rho))
    ranked = sorted(({"attribute": k, "mean_spearman": float(np.mean(v)),
                      "all_samples_same_sign": bool(np.all(np.sign(v) == np.sign(np.mean(v)))),
                      "per_sample": v} for k, v in by_attr.items()), key=lambda r: -abs(r["mean_spearman"]))
    top = ranked[0]
    log(f"PC1 ({summary['directions'][0].get('explained_variance_ratio', float('nan')):.1%} of variance): "
        f"{top['attribute']} ρ = {top['mean_spearman']:.2f}")
    return {"scales": scales, "set_size": args.set_size, "centre": args.centre,
            "base": summary.get("base"), "direction": summary["directions"][0],
            **naturalness_of(Manifest.read(out).records, out, x),
            "attributes_by_monotonicity": ranked, "seconds": round(seconds, 1), "out": str(out)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/walk_quality"))
    ap.add_argument("--pairs", default="0-9,1-7,5-8,2-6", help="class pairs A-B (Fashion-MNIST class numbers)")
    ap.add_argument("--points", type=int, default=9)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--scales", default="-3,-2,-1,0,1,2,3")
    ap.add_argument("--set-size", type=int, default=1000)
    ap.add_argument("--schedule", default="balanced")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--centre", choices=["medoid", "mean"], default="medoid", help="what PC1 is walked around")
    ap.add_argument("--skip", choices=["interpolate", "perturb"], action="append", default=[],
                    help="leave a part out (its section of the results JSON is kept from the last run)")
    args = ap.parse_args(argv)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cnn = load_encoder("bundled:fashion-cnn", device="cpu")
    x, y = fashion_mnist("test")
    feats, probs = embed(cnn, x)
    exemplars = {}
    for c in range(10):
        good = np.where((y == c) & (probs.argmax(1) == c))[0]
        centre = feats[good].mean(0)
        exemplars[c] = int(good[np.argmin(((feats[good] - centre) ** 2).sum(1))])

    result: dict = {"prior": "bundled:fashion-ddpm", "encoder": "bundled:fashion-cnn", "schedule": args.schedule,
                    "points": args.points, "samples": args.samples}
    FIGURES.mkdir(parents=True, exist_ok=True)
    if "interpolate" not in args.skip:
        result["interpolation"] = interpolation(args, cnn, load_judges(), x, exemplars, work)
        first = result["interpolation"]["pairs"][0]
        shutil.copy(Path(first["out"]) / "strip.png", FIGURES / "interpolate-strip.png")
        shutil.copy(Path(first["out"]) / "distances.png", FIGURES / "interpolate-distances.png")
    if "perturb" not in args.skip:
        result["perturb"] = perturbation(args, x, work)
        shutil.copy(Path(result["perturb"]["out"]) / "grid.png", FIGURES / "perturb-pc1.png")
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "walk_quality.json"
    if args.skip and previous.is_file():  # keep the skipped part's figures from the last run
        kept = json.loads(previous.read_text())
        result.update({k: kept[k] for k in ("interpolation", "perturb") if k in kept and k not in result})
    (RESULTS / "walk_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    if "interpolation" in result:
        print("| pair | strips switching once (fashion-cnn) | (independent judges) | realism median | "
              "off-manifold | NN ratio | mean ρ(P(B), t) | interior / endpoint distance | "
              "relative distance endpoints, interior |")
        print("|---|---|---|---|---|---|---|---|---|")
        for p in result["interpolation"]["pairs"]:
            print(f"| {p['a']} → {p['b']} | {sum(p['switches_once'])}/{len(p['switches_once'])} | "
                  f"{sum(p['switches_once_judges'])}/{len(p['switches_once_judges'])} | "
                  f"{p['realism_median']:.2f} | {p['off_manifold_share']:.2f} | {p['nn_ratio']:.2f} | "
                  f"{np.mean(p['spearman_p_b_vs_t']):.2f} | {p['interior_over_endpoint_median']:.2f} | "
                  f"{p['median_relative_distance_endpoints']:.3f}, {p['median_relative_distance_interior']:.3f} |")
    if "perturb" in result:
        print("\n| attribute (PC1 perturb) | mean Spearman ρ with scale | same sign in every sample |")
        print("|---|---|---|")
        for r in result["perturb"]["attributes_by_monotonicity"][:6]:
            print(f"| {r['attribute']} | {r['mean_spearman']:+.2f} | {r['all_samples_same_sign']} |")
    return result


if __name__ == "__main__":
    main()
