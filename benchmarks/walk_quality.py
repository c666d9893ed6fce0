"""Issues 5 and 25's quality check: do interpolation paths and principal-component walks decode sensibly?

    python benchmarks/walk_quality.py                      # fashion-ddpm + fashion-cnn, default preset
    python benchmarks/walk_quality.py --pairs 0-9,1-7 --points 9 --samples 4
    python benchmarks/walk_quality.py --setting emoji      # emoji-ddpm + efficientnet_lite0 (ImageNet)

Both bundled settings: ``fashion`` (Fashion-MNIST test images, fashion-cnn embedding) and ``emoji`` (the 378
held-out emoji, the real ImageNet EfficientNet-Lite0's 1280-d embedding; pairs are held-out emoji indices,
``--pairs 205-72`` = slightly frowning face → rabbit). Every walk reports the share of its points that are
*reached and natural*: none of probe's decode checks flagged them (``off_manifold`` realism,
``not_reached``: farther from the target than the nearest real training image, ``out_of_domain`` target;
probe.reference). Goal (issue 25): ≥ 90 % per walk on both settings.

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

The class-switching and judge checks need the classifier's classes and the judges, so they run on fashion
only; emoji walks report the flags, realism, the NN ratio (colour pixels, training emoji) and distances.

Writes ``benchmarks/results/walk_quality.json`` (``walk_quality_emoji.json``) and copies strip/grid PNGs to
``docs/figures/`` (``emoji-`` prefixed for emoji).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

import probe
from probe.datasets import FASHION_CLASSES, emoji, fashion_mnist, fashion_slug
from probe.manifest import Manifest, SampleRecord
from probe.models.registry import load_encoder
from probe.persistence.attributes import get_attributes, is_grey
from probe.persistence.scoring import grey_collapse
from probe.store import FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_fidelity import parse_overrides  # noqa: E402
from naturalness import load_judges, nn_ratio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


@dataclass(frozen=True)
class Setting:
    """One bundled (encoder, prior) pair and its real images."""

    name: str
    encoder: str
    prior: str
    pairs: str  # default interpolation pairs
    results: str  # results file name
    figure_prefix: str
    classes: bool  # fashion-cnn classes and the Fashion-MNIST judges apply

    def test_images(self) -> np.ndarray:
        """uint8 [N, H, W] (grey) or [N, H, W, 3] (colour) held-out images."""
        return fashion_mnist("test")[0] if self.classes else emoji("test")

    def train_images(self) -> np.ndarray | None:
        return None if self.classes else emoji("train")  # None: nn_ratio's Fashion-MNIST train


SETTINGS = {
    "fashion": Setting("fashion", "bundled:fashion-cnn", "bundled:fashion-ddpm", "0-9,1-7,5-8,2-6",
                       "walk_quality.json", "", True),
    # slightly frowning face -> rabbit, hamburger -> purple heart (held-out emoji indices)
    "emoji": Setting("emoji", "bundled:efficientnet_lite0", "bundled:emoji-ddpm", "205-72,38-170",
                     "walk_quality_emoji.json", "emoji-", False),
}


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


def flag_shares(records: list[SampleRecord]) -> dict:
    """Share of a walk's decoded points that reached their feature and look natural (neither ``not_reached``
    nor ``off_manifold``: the decode checks), the share with no flag at all (``out_of_domain`` also marks a
    *target* no real image's feature lies near, e.g. between two classes), and each flag's share."""
    n = max(1, len(records))
    return {"decoded_points": len(records),
            "reached_and_natural": sum(r.not_reached is False and r.off_manifold is False for r in records) / n,
            "unflagged": sum(r.flagged is False for r in records) / n,
            **{name: sum(getattr(r, name) is True for r in records) / n
               for name in ("not_reached", "off_manifold", "out_of_domain")}}


def naturalness_of(setting: Setting, records: list[SampleRecord], out: Path, real: np.ndarray) -> dict:
    """Decode flags, realism scores from the manifest and the NN ratio of a walk's decoded images."""
    nat = np.array([r.naturalness for r in records if r.naturalness is not None], dtype=float)
    mode = "L" if setting.classes else "RGB"
    imgs = np.stack([np.asarray(Image.open(out / r.image).convert(mode)) for r in records])
    return {**flag_shares(records),
            "realism_median": float(np.median(nat)) if nat.size else None,
            "nn_ratio": nn_ratio(imgs, real, train=setting.train_images())["ratio"]}


def switches_once(seq: list[int], a: int, b: int) -> bool:
    changes = sum(1 for x, y in zip(seq, seq[1:]) if x != y)
    return seq[0] == a and seq[-1] == b and set(seq) <= {a, b} and changes == 1


def endpoint_store(setting: Setting, x: np.ndarray, exemplars: dict[int, int], work: Path) -> tuple[Path, dict]:
    """Extract the endpoint images' features; returns the store and {key: row}."""
    img_dir = work / "exemplars"
    shutil.rmtree(img_dir, ignore_errors=True)
    for key, i in exemplars.items():
        folder = img_dir / (slug(key) if setting.classes else f"{key:03d}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / f"test{i:05d}.png")
    store = work / "exemplars.h5"
    probe.extract(setting.encoder, img_dir, out=store, labels="parent", overwrite=True)
    with FeatureStore(store) as fs:  # rows by folder (extract's order is its own)
        paths = fs.group().paths
    return store, {int(Path(p).parent.name.split("-")[0]): r for r, p in enumerate(paths)}


def interpolation(args, setting: Setting, cnn, judges, x: np.ndarray, exemplars: dict[int, int],
                  work: Path, path: str = "linear") -> dict:
    pairs = [tuple(int(v) for v in token.split("-")) for token in (args.pairs or setting.pairs).split(",")]
    if not setting.classes:  # emoji: the pair names held-out images themselves
        exemplars = {i: i for pair in pairs for i in pair}
    store, rows = endpoint_store(setting, x, exemplars, work)
    name = (lambda c: FASHION_CLASSES[c]) if setting.classes else (lambda i: f"emoji test[{i}]")
    strips_ok, strips_all, per_pair = 0, 0, []
    for a, b in pairs:
        out = work / (f"interpolate-{a}-{b}" + ("" if path == "linear" else f"-{path}"))
        t0 = time.perf_counter()
        walk = {"path": path, **({"store": set_store(args, setting, x, work)} if path == "data" else {})}
        probe.interpolate(setting.encoder, f"{store}:{rows[a]}", f"{store}:{rows[b]}", prior=setting.prior,
                          points=args.points, samples=args.samples, schedule=args.schedule,
                          batch_size=args.batch_size, out=out, overwrite=True, progress=False, **walk,
                          **args.overrides)
        seconds = time.perf_counter() - t0
        summary = json.loads((out / "path.json").read_text())
        records = Manifest.read(out).cells()
        cells = [[records[(p["target_id"], s)] for p in summary["points"]] for s in range(args.samples)]
        best = np.array(summary["best_distance"], dtype=float)  # [samples, points]
        rel = np.array([[r.relative_distance for r in row] for row in cells], dtype=float)
        ends = np.concatenate([best[:, 0], best[:, -1]])
        inner = best[:, 1:-1].ravel()
        entry = {
            "a": name(a), "b": name(b), "distance_a_b": summary["distance_a_b"],
            **naturalness_of(setting, list(records.values()), out, x),
            **{f"interior_{k}": v for k, v in flag_shares([r for row in cells for r in row[1:-1]]).items()
               if k in ("reached_and_natural", "unflagged", "out_of_domain")},
            "median_distance_endpoints": float(np.median(ends)),
            "median_distance_interior": float(np.median(inner)), "max_distance_interior": float(inner.max()),
            "median_relative_distance_endpoints": float(np.median(np.concatenate([rel[:, 0], rel[:, -1]]))),
            "median_relative_distance_interior": float(np.median(rel[:, 1:-1])),
            "interior_over_endpoint_median": float(np.median(inner) / np.median(ends)),
            "seconds": round(seconds, 1), "seconds_per_image": round(seconds / best.size, 2), "out": str(out),
            "path": path, **({"visited_images": summary["data_path"]["visited_images"]} if path == "data" else {}),
        }
        if setting.classes:
            ok, ok_judges, rhos, seqs, jseqs = [], [], [], [], []
            for row in cells:
                rels = [r.image for r in row]
                probs = classify_files(cnn, out, rels)
                seq = [int(v) for v in probs.argmax(1)]
                seqs.append(seq)
                ok.append(switches_once(seq, a, b))
                jseq = judge_classes(judges, np.stack([np.asarray(Image.open(out / r).convert("L")) for r in rels]))
                jseqs.append(jseq)
                ok_judges.append(switches_once(jseq, a, b))
                rhos.append(float(spearmanr(summary["positions"], probs[:, b]).statistic))
            entry.update({
                "predicted_classes": [[FASHION_CLASSES[c] for c in seq] for seq in seqs],
                "switches_once": ok, "share_switching_once": float(np.mean(ok)),
                "judge_classes": [[FASHION_CLASSES[c] for c in seq] for seq in jseqs],
                "switches_once_judges": ok_judges, "share_switching_once_judges": float(np.mean(ok_judges)),
                "spearman_p_b_vs_t": rhos})
            strips_ok += sum(ok)
            strips_all += len(ok)
        per_pair.append(entry)
        log(f"{path} {entry['a']} → {entry['b']}: reached and natural {entry['reached_and_natural']:.0%} "
            f"(interior {entry['interior_reached_and_natural']:.0%}); interior/endpoint distance "
            f"{entry['interior_over_endpoint_median']:.2f}; {entry['seconds_per_image']} s an image")
    result = {"pairs": per_pair,
              "reached_and_natural": float(np.mean([p["reached_and_natural"] for p in per_pair])),
              "min_reached_and_natural": float(min(p["reached_and_natural"] for p in per_pair)),
              "unflagged": float(np.mean([p["unflagged"] for p in per_pair])),
              "realism_median": float(np.median([p["realism_median"] for p in per_pair])),
              "off_manifold_share": float(np.mean([p["off_manifold"] for p in per_pair])),
              "nn_ratio": float(np.mean([p["nn_ratio"] for p in per_pair])),
              "median_interior_over_endpoint": float(np.median([p["interior_over_endpoint_median"]
                                                                for p in per_pair]))}
    if setting.classes:
        result.update({
            "share_switching_once": strips_ok / max(1, strips_all),
            "share_switching_once_judges": float(np.mean([v for p in per_pair for v in p["switches_once_judges"]])),
            "mean_spearman_p_b_vs_t": float(np.mean([np.mean(p["spearman_p_b_vs_t"]) for p in per_pair]))})
    return result


def set_store(args, setting: Setting, x: np.ndarray, work: Path) -> Path:
    """Features of ``--set-size`` seeded held-out images: perturb's PCA set and the data paths' graph."""
    store = work / "set.h5"
    n = min(args.set_size, len(x))
    if store.is_file():
        with FeatureStore(store) as fs:
            if len(fs.group().paths) == n:
                return store
    img_dir = work / "set"
    idx = np.random.default_rng(1).choice(len(x), n, replace=False)
    shutil.rmtree(img_dir, ignore_errors=True)
    img_dir.mkdir(parents=True)
    for i in idx:
        Image.fromarray(x[i]).save(img_dir / f"test{i:05d}.png")
    probe.extract(setting.encoder, img_dir, out=store, overwrite=True)
    return store


def perturbation(args, setting: Setting, x: np.ndarray, work: Path) -> dict:
    store = set_store(args, setting, x, work)
    n = min(args.set_size, len(x))
    out = work / "perturb-pc1"
    t0 = time.perf_counter()
    probe.perturb(setting.encoder, args.centre, store, prior=setting.prior, components=[1], scales=args.scales,
                  samples=args.samples, schedule=args.schedule, batch_size=args.batch_size, out=out,
                  overwrite=True, progress=False, **args.overrides)
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
    records = Manifest.read(out).records
    nat = naturalness_of(setting, records, out, x)
    log(f"PC1 ({summary['directions'][0].get('explained_variance_ratio', float('nan')):.1%} of variance): "
        f"{top['attribute']} ρ = {top['mean_spearman']:.2f}; reached and natural {nat['reached_and_natural']:.0%}")
    return {"scales": summary.get("scales", args.scales), "set_size": n, "centre": args.centre,
            "base": summary.get("base"), "direction": summary["directions"][0], **nat,
            "attributes_by_monotonicity": ranked, "seconds": round(seconds, 1),
            "seconds_per_image": round(seconds / max(1, len(records)), 2), "out": str(out)}


def fashion_exemplars(cnn, x: np.ndarray, y: np.ndarray) -> dict[int, int]:
    """Per class, the correctly classified test image whose embedding is nearest the class mean."""
    feats, probs = embed(cnn, x)
    exemplars = {}
    for c in range(10):
        good = np.where((y == c) & (probs.argmax(1) == c))[0]
        centre = feats[good].mean(0)
        exemplars[c] = int(good[np.argmin(((feats[good] - centre) ** 2).sum(1))])
    return exemplars


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="fashion")
    ap.add_argument("--work", type=Path, default=None, help="[runs/walk_quality(_emoji)]")
    ap.add_argument("--pairs", default=None, help="pairs A-B: Fashion-MNIST classes, or held-out emoji indices")
    ap.add_argument("--points", type=int, default=9)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--scales", default="data", help="perturb scales: 'data' (percentiles) or σ multiples")
    ap.add_argument("--set-size", type=int, default=1000)
    ap.add_argument("--schedule", default="auto", help="[auto: the decode default]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="guidance options on top of --schedule, e.g. late_rounds=6 (repeatable; key=val,...)")
    ap.add_argument("--tag", default="",
                    help="write results/walk_quality[_emoji]_TAG.json and leave docs/figures alone "
                         "(for a variant beside the default's results)")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--centre", choices=["medoid", "mean"], default="medoid", help="what PC1 is walked around")
    ap.add_argument("--paths", default="linear,data", help="interpolation paths to walk [linear,data]")
    ap.add_argument("--skip", choices=["interpolate", "perturb"], action="append", default=[],
                    help="leave a part out (its section of the results JSON is kept from the last run)")
    args = ap.parse_args(argv)
    setting = SETTINGS[args.setting]
    args.overrides = {k: v for item in args.set for k, v in parse_overrides(item, f"--set {item!r}").items()}
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)

    work = args.work or Path("runs") / ("walk_quality" + ("" if setting.classes else f"_{setting.name}"))
    work.mkdir(parents=True, exist_ok=True)
    x = setting.test_images()
    cnn = load_encoder("bundled:fashion-cnn", device="cpu") if setting.classes else None
    exemplars = fashion_exemplars(cnn, x, fashion_mnist("test")[1]) if setting.classes else {}

    result: dict = {"setting": setting.name, "prior": setting.prior, "encoder": setting.encoder,
                    "schedule": args.schedule, "overrides": args.overrides, "points": args.points,
                    "samples": args.samples,
                    "torch_threads": torch.get_num_threads()}
    figures = None if args.tag else FIGURES
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
    fig = setting.figure_prefix
    if "interpolate" not in args.skip:
        judges = load_judges() if setting.classes else None
        for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
            key = "interpolation" if path == "linear" else f"interpolation_{path}"
            result[key] = interpolation(args, setting, cnn, judges, x, exemplars, work, path)
            first = result[key]["pairs"][0]
            name = "interpolate" if path == "linear" else f"interpolate-{path}"
            if figures:
                shutil.copy(Path(first["out"]) / "strip.png", figures / f"{fig}{name}-strip.png")
                shutil.copy(Path(first["out"]) / "distances.png", figures / f"{fig}{name}-distances.png")
    if "perturb" not in args.skip:
        result["perturb"] = perturbation(args, setting, x, work)
        if figures:
            shutil.copy(Path(result["perturb"]["out"]) / "grid.png", figures / f"{fig}perturb-pc1.png")
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / (setting.results if not args.tag else setting.results.replace(".json", f"_{args.tag}.json"))
    if args.skip and previous.is_file():  # keep the skipped part's figures from the last run
        kept = json.loads(previous.read_text())
        result.update({k: v for k, v in kept.items() if k.startswith(("interpolation", "perturb")) and k not in result})
    previous.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    return result


def print_report(result: dict) -> None:
    print("| walk | points | reached and natural (interior) | no flag | not reached | off-manifold | "
          "target out of domain | realism median | NN ratio | interior / endpoint distance | s an image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in [p for k in result if k.startswith("interpolation") for p in result[k]["pairs"]]:
        print(f"| {p.get('path', 'linear')} {p['a']} → {p['b']} | {p['decoded_points']} | "
              f"{p['reached_and_natural']:.0%} "
              f"({p['interior_reached_and_natural']:.0%}) | {p.get('unflagged', float('nan')):.0%} | "
              f"{p['not_reached']:.0%} | "
              f"{p['off_manifold']:.0%} | {p['out_of_domain']:.0%} | {p['realism_median']:.2f} | {p['nn_ratio']:.2f} | "
              f"{p['interior_over_endpoint_median']:.2f} | {p['seconds_per_image']} |")
    if "perturb" in result:
        q = result["perturb"]
        print(f"| PC1 perturb ({q['centre']}) | {q['decoded_points']} | {q['reached_and_natural']:.0%} | "
              f"{q.get('unflagged', float('nan')):.0%} | {q['not_reached']:.0%} | {q['off_manifold']:.0%} | "
              f"{q['out_of_domain']:.0%} | {q['realism_median']:.2f} | {q['nn_ratio']:.2f} | | "
              f"{q['seconds_per_image']} |")
    for p in [p for k in result if k.startswith("interpolation") for p in result[k]["pairs"]]:
        if "switches_once" in p:
            print(f"{p.get('path', 'linear')} {p['a']} → {p['b']}: "
                  f"{sum(p['switches_once'])}/{len(p['switches_once'])} strips switch once "
                  f"(judges {sum(p['switches_once_judges'])}/{len(p['switches_once_judges'])})")
    if "perturb" in result:
        print("\n| attribute (PC1 perturb) | mean Spearman ρ with scale | same sign in every sample |")
        print("|---|---|---|")
        for r in result["perturb"]["attributes_by_monotonicity"][:6]:
            print(f"| {r['attribute']} | {r['mean_spearman']:+.2f} | {r['all_samples_same_sign']} |")


if __name__ == "__main__":
    main()
