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

The decode checks together (issue 25 item 4: realism is one-sided; smooth tiles from a target outside the
prior's domain score *below* 1 and pass it):

    python benchmarks/realism_auc.py --decodes photo-tiles:bad:runs/photo --decodes textured:bad:runs/tex \
        --decodes good:good:runs/good --out benchmarks/results/realism_auc_emoji.json

reads each ``probe decode`` folder's manifest (realism ``naturalness``, ``reach_ratio``, ``domain_ratio``,
written by the decode) and reports, per group and rule, the share flagged, and the AUC between the groups
labelled bad and good of each rule's score and of the combined one, max(realism / 2, reach ratio, domain
ratio): each term is > 1 exactly when its rule flags.
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
    ap.add_argument("--textured", type=Path, help="preset_search folder of textured decodes")
    ap.add_argument("--decoded", type=Path, help="preset_search folder with none.npz and presets")
    ap.add_argument("--decodes", action="append", default=[], metavar="NAME:bad|good:FOLDER",
                    help="a probe decode folder and its label (repeatable): score the decode checks together")
    ap.add_argument("--fidelity", action="append", default=[], metavar="NAME:bad|good:JSON",
                    help="emoji decode_fidelity.py results (per-sample realism and distances of held-out emoji "
                         "targets) and their label, scored with the same checks (repeatable)")
    ap.add_argument("--prior", default="bundled:fashion-ddpm")
    ap.add_argument("--real", type=int, default=200, help="real test images scored [200]")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    if args.decodes or args.fidelity:
        return checks_auc(args.decodes, args.out, args.fidelity)
    if not (args.textured and args.decoded):
        ap.error("give --textured and --decoded, or --decodes")
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


def fidelity_checks(path: Path) -> list[dict]:
    """Per preset of an emoji ``decode_fidelity.py`` JSON: realism, reach ratio and domain ratio per sample,
    the latter two from the Lite0 reference set of emoji-ddpm (``probe.reference``)."""
    from probe.datasets import emoji
    from probe.models.registry import load_encoder
    from probe.reference import encode_uint8, reference_set

    d = json.loads(path.read_text())
    enc = load_encoder(d["encoder"], device="cpu")
    ref = reference_set(d["prior"], enc)
    held = emoji("test")
    out = []
    for row in d["presets"]:
        ps = row["per_sample"]
        if "realism" not in ps:
            continue
        feats = encode_uint8(enc, held[np.asarray(ps["target_index"])])
        out.append({"preset": row["name"], "realism": np.asarray(ps["realism"], dtype=np.float64),
                    "reach_ratio": np.asarray(ps["best_distance"]) / np.maximum(ref.nearest(feats), 1e-12),
                    "domain_ratio": ref.domain_ratio(feats)})
    return out


def checks_auc(specs: list[str], out: Path, fidelity: list[str] = ()) -> dict:
    """Flag shares and AUCs of the decode checks on labelled probe decode folders (see the docstring)."""
    from probe.manifest import Manifest

    groups: dict[str, dict] = {}
    for spec in fidelity:
        name, label, path = spec.split(":", 2)
        for part in fidelity_checks(Path(path)):
            real, reach, dom = part["realism"], part["reach_ratio"], part["domain_ratio"]
            groups[f"{name} ({part['preset']})"] = {
                "label": label, "folder": path, "n": len(real),
                "scores": {"realism": real, "reach_ratio": reach, "domain_ratio": dom,
                           "combined": np.maximum.reduce([real / OFF_MANIFOLD, reach, dom])},
                "flagged": {"off_manifold": float(off_manifold(real).mean()), "not_reached": float((reach > 1).mean()),
                            "out_of_domain": float((dom > 1).mean()),
                            "any": float(((real > OFF_MANIFOLD) | (reach > 1) | (dom > 1)).mean())},
                "median": {"realism": float(np.median(real)), "reach_ratio": float(np.median(reach)),
                           "domain_ratio": float(np.median(dom))}}
    for spec in specs:
        name, label, folder = spec.split(":", 2)
        if label not in ("bad", "good"):
            raise SystemExit(f"--decodes {spec!r}: the label is bad or good")
        recs = list(Manifest.read(Path(folder) / "manifest.jsonl"))
        missing = [r.image for r in recs if r.naturalness is None or r.reach_ratio is None]
        if missing:
            raise SystemExit(f"{folder}: {len(missing)} record(s) lack the checks (decode them again with this probe)")
        real = np.array([r.naturalness for r in recs])
        reach = np.array([r.reach_ratio for r in recs])
        dom = np.array([r.domain_ratio for r in recs])
        groups[name] = {"label": label, "folder": str(folder), "n": len(recs),
                        "scores": {"realism": real, "reach_ratio": reach, "domain_ratio": dom,
                                   "combined": np.maximum.reduce([real / OFF_MANIFOLD, reach, dom])},
                        "flagged": {"off_manifold": float(off_manifold(real).mean()),
                                    "not_reached": float((reach > 1).mean()), "out_of_domain": float((dom > 1).mean()),
                                    "any": float(np.array([bool(r.flagged) for r in recs]).mean())},
                        "median": {"realism": float(np.median(real)), "reach_ratio": float(np.median(reach)),
                                   "domain_ratio": float(np.median(dom))}}
    bad = [g for g in groups.values() if g["label"] == "bad"]
    good = [g for g in groups.values() if g["label"] == "good"]
    result = {"groups": {k: {**{kk: vv for kk, vv in g.items() if kk != "scores"},
                             "per_sample": {kk: np.asarray(vv).tolist() for kk, vv in g["scores"].items()}}
                         for k, g in groups.items()},
              "auc_bad_vs_good": {}}
    if bad and good:
        for rule in ("realism", "reach_ratio", "domain_ratio", "combined"):
            result["auc_bad_vs_good"][rule] = auc(np.concatenate([g["scores"][rule] for g in bad]),
                                                  np.concatenate([g["scores"][rule] for g in good]))
    for k, g in result["groups"].items():
        med = ", ".join(f"{kk} {vv:.2f}" for kk, vv in g["median"].items())
        fl = ", ".join(f"{kk} {vv:.2f}" for kk, vv in g["flagged"].items())
        print(f"{k} ({g['label']}, n {g['n']}): medians {med}; flagged {fl}")
    for k, v in result["auc_bad_vs_good"].items():
        print(f"AUC bad vs good, {k}: {v:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
