"""Decode fidelity on a real ImageNet network: held-out emoji through Lite0, judged by Lite2 (issue 25).

    python benchmarks/emoji_fidelity.py                                  # all 54 targets, fast + balanced
    python benchmarks/emoji_fidelity.py --limit 4 --presets fast         # a subset (resumes the same work)
    python benchmarks/emoji_fidelity.py --presets fast,balanced,paper --paper-limit 9

Targets: the FIXED list ``benchmarks/emoji_targets.json`` (54 held-out emoji, 6 per non-empty emoji.json
category, interleaved so every ``--limit`` prefix is balanced), decoded by ``bundled:emoji-ddpm`` guided by
``bundled:efficientnet_lite0`` (embedding), target k with seed k, one decode per target and preset. The
gallery for retrieval@1 is 1,000 emoji features: the 324 other held-out emoji and 676 seeded training emoji.

Per preset, the Fashion-MNIST table's columns (benchmarks/decode_fidelity.py, preset_score.py): mean
distance, relative distance (over the unguided sample of the same seed), retrieval@1, cosine, evaluations
and wall seconds per image, the category judge ÷ real targets, FD ÷ unguided, NN ratio, realism median, and
the share flagged (any of: realism > 2, not reached, target out of domain — probe.reference). Plus an
independent ImageNet judge, ``bundled:efficientnet_lite2`` (never guided with):

  top-5 agreement   |top-5 ImageNet classes of target ∩ of decode| / 5, mean over targets
  Lite2 cosine      cosine of Lite2's 1280-d embeddings, target ↔ decode

each beside the same for the unguided samples (unguided sample k ↔ target k) and for real target pairs
(all pairs of distinct targets: what two random real emoji share; and same-category pairs).

Resumable: every decoded image and its numbers are saved under ``--work`` (one .npz per target and preset;
a preset whose settings changed is refused unless ``--fresh``), so a killed run continues where it stopped
and a larger ``--limit`` decodes only the new targets. Writes the markdown table to stdout and JSON to
``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_fidelity import cosines, features, fmt, parse_extra, summary, uint8_images  # noqa: E402
from preset_score import images01, naturalness_figures  # noqa: E402

from probe.datasets import emoji  # noqa: E402
from probe.diffusion.priors import load_prior  # noqa: E402
from probe.diffusion.sampler import sample_stream  # noqa: E402
from probe.diffusion.schedules import PRESETS, GuidanceConfig  # noqa: E402
from probe.metrics import retrieval_rank  # noqa: E402
from probe.models.registry import load_encoder  # noqa: E402
from probe.naturalness import denoising_error, off_manifold  # noqa: E402
from probe.reference import not_reached, reach_ratio, reference_set  # noqa: E402
from probe.seed_pool import pool_images  # noqa: E402
from probe.starts import chain_starts  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "emoji_targets.json"
PRIOR, ENCODER, JUDGE = "bundled:emoji-ddpm", "bundled:efficientnet_lite0", "bundled:efficientnet_lite2"
GALLERY = 1000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_targets(limit: int | None) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The fixed targets (first ``limit``), their uint8 images, and the gallery's uint8 images."""
    spec = json.loads(TARGETS.read_text())["targets"]
    held = emoji("test")
    all_idx = np.array([t["test_index"] for t in spec])
    rest = np.setdiff1d(np.arange(len(held)), all_idx)  # never a target at any --limit
    train = emoji("train")
    fill = np.sort(np.random.default_rng(0).permutation(len(train))[:GALLERY - len(rest)])
    gallery = np.concatenate([held[rest], train[fill]])
    chosen = spec[:limit] if limit else spec
    return chosen, held[[t["test_index"] for t in chosen]], gallery


def config_key(config: GuidanceConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def folder_for(work: Path, name: str, config: GuidanceConfig, fresh: bool) -> Path:
    """The preset's work folder; refuses (or with ``fresh`` clears) one made with other settings."""
    folder = work / name.replace(":", "_").replace(",", "_").replace("=", "-")
    meta = folder / "config.json"
    want = {"config": config.to_dict(), "prior": PRIOR, "encoder": ENCODER}
    if meta.is_file():  # settings added since the folder was made count at their defaults
        had = json.loads(meta.read_text())
        had["config"] = GuidanceConfig(**had.get("config", {})).to_dict()
        if json.loads(json.dumps(had)) != json.loads(json.dumps(want)):
            if not fresh:
                raise SystemExit(f"{folder}: decoded with other settings; pass --fresh to redo it")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(want, indent=1) + "\n")
    return folder


def decode_missing(prior, encoder, vectors: torch.Tensor, config: GuidanceConfig, folder: Path, batch: int) -> None:
    """Decode every target k (seed k) with no saved result in ``folder``, ``batch`` targets per call, through
    the sampler's queue with as many chains per network call as ``probe decode --batch-size auto`` runs."""
    from probe.diffusion.memory import auto_chains

    chains = auto_chains(prior, encoder)
    todo = [k for k in range(len(vectors)) if not (folder / f"t{k:03d}.npz").is_file()]
    for lo in range(0, len(todo), batch):
        seeds = todo[lo:lo + batch]
        # each target is saved as soon as the queue finishes it: a killed run keeps every finished target
        starts = chain_starts(prior, encoder, config, vectors[seeds].numpy(), [0] * len(seeds), 1, chains)
        for j, res in sample_stream(prior, encoder, vectors[seeds], seeds, config, max_chains=chains,
                                    **starts.sampler_kwargs()):
            k = seeds[j]
            images = res.final_images if config.unguided else res.best_images
            dist = res.final_distance if config.unguided else res.best_distance
            tmp = folder / f".t{k:03d}.tmp.npz"
            np.savez(tmp, image=uint8_images(images)[0], distance=float(dist[0]) if dist is not None else np.nan,
                     evaluations=int(res.evaluations[0]), seconds=float(res.seconds))
            tmp.replace(folder / f"t{k:03d}.npz")
        log(f"  {config.name}: targets {seeds} done")


def read_folder(folder: Path, n: int) -> dict:
    z = [np.load(folder / f"t{k:03d}.npz") for k in range(n)]
    return {"images": np.stack([x["image"] for x in z]), "distance": np.array([float(x["distance"]) for x in z]),
            "evaluations": np.array([int(x["evaluations"]) for x in z]),
            "seconds": np.array([float(x["seconds"]) for x in z])}


@torch.no_grad()
def judge_view(judge, u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lite2's top-5 ImageNet classes [N, 5] and 1280-d embeddings [N, 1280] of uint8 images."""
    x = images01(u8)
    logits, emb = [], []
    for i in range(0, len(x), 32):
        f = judge.features(x[i:i + 32])
        logits.append(f["logits"])
        emb.append(f["embedding"])
    return torch.cat(logits).topk(5, dim=1).indices.numpy(), torch.cat(emb).numpy()


def top5_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / 5 for x, y in zip(a, b)])


def judge_figures(t_top, t_emb, d_top, d_emb) -> dict:
    return {"top5_agreement": float(top5_overlap(t_top, d_top).mean()),
            "lite2_cosine": float(cosines(d_emb, t_emb).mean()),
            "per_image": {"top5_agreement": top5_overlap(t_top, d_top).tolist(),
                          "lite2_cosine": cosines(d_emb, t_emb).tolist()}}


def real_pairs(t_top, t_emb, categories: list[str]) -> dict:
    """The judge's figures between distinct real targets: all pairs, and pairs of the same category."""
    out = {}
    n = len(t_top)
    pairs = [(i, j) for i in range(n) for j in range(n) if i < j]
    same = [(i, j) for i, j in pairs if categories[i] == categories[j]]
    for name, ps in (("random_pairs", pairs), ("same_category_pairs", same)):
        if not ps:
            out[name] = None
            continue
        i, j = np.array(ps).T
        out[name] = {"n": len(ps), "top5_agreement": float(top5_overlap(t_top[i], t_top[j]).mean()),
                     "lite2_cosine": float(cosines(t_emb[i], t_emb[j]).mean())}
    return out


def nearest_row(encoder, judge, images: np.ndarray, tgt_f, tgt_u8, index, t_top, t_emb, base_d) -> dict:
    """What a search of ``images`` (uint8 [N, H, W, 3]) by Lite0 feature alone gives: for each target the
    image whose feature is nearest, scored as a decode is (relative distance, cosine, category judge ÷ real,
    Lite2 agreement and cosine). Over the prior's training emoji it says what the feature supports: a
    decode closer to the target than that image (reach ratio < 1) that still shows another object says
    Lite0's feature does not hold the object at this resolution, not that guidance failed. Over the seed
    pool's unguided samples it says where a pool decode starts."""
    from naturalness import emoji_categories, load_emoji_space

    feats = features(encoder, images01(images))
    d = torch.cdist(torch.from_numpy(tgt_f).double(), torch.from_numpy(feats).double()).pow(2).numpy()
    pick = d.argmin(1)
    near_u8 = images[pick]
    cats = emoji_categories("test")[np.asarray(index, dtype=np.int64)]
    space = load_emoji_space()
    real_acc = float((space.predict_category(tgt_u8) == cats).mean())
    acc = float((space.predict_category(near_u8) == cats).mean())
    n_top, n_emb = judge_view(judge, near_u8)
    best = d[np.arange(len(pick)), pick]
    return {"n": len(pick), "training_images": len(images), "mean_relative_distance": float((best / base_d).mean()),
            "mean_cosine": float(cosines(feats[pick], tgt_f).mean()),
            "judge_ratio": acc / real_acc if real_acc > 0 else float("nan"),
            **{k: v for k, v in judge_figures(t_top, t_emb, n_top, n_emb).items() if k != "per_image"},
            "train_index": pick.tolist()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--presets", default="fast,balanced", help=f"comma-separated, of {', '.join(PRESETS)}")
    ap.add_argument("--limit", type=int, default=None, help="the first N of the 54 fixed targets [all]")
    ap.add_argument("--paper-limit", type=int, default=9, help="targets for the paper preset (its first ones) [9]")
    ap.add_argument("--batch-size", type=int, default=9, help="targets per sampler call, sharing its queue [9]")
    ap.add_argument("--extra", action="append", default=[], metavar="BASE:key=val,...",
                    help="also decode a variant of a preset, e.g. balanced:narrow_at=4,narrow_keep=8,early_steps=12"
                         " (repeatable)")
    ap.add_argument("--candidates", type=int, default=None, help="override the presets' candidate count")
    ap.add_argument("--grad-min-weight", type=float, default=None,
                    help="override: rounds below this capped weight run forward-only (probe decode --grad-min-weight)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "emoji_fidelity_work",
                    help="where decodes are kept between runs [runs/emoji_fidelity_work]")
    ap.add_argument("--fresh", action="store_true", help="redo presets whose saved decodes used other settings")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "emoji_fidelity.json")
    ap.add_argument("--label", default="", help="a note stored in the JSON (e.g. 'smoke run')")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    names = [s.strip() for s in args.presets.split(",") if s.strip()]  # "" = only the --extra variants
    for nm in names:
        if nm not in PRESETS or PRESETS[nm].unguided:
            raise SystemExit(f"--presets: {nm!r} is not a guided preset ({', '.join(PRESETS)})")

    chosen, tgt_u8, gal_u8 = load_targets(args.limit)
    n = len(chosen)
    index = np.array([t["test_index"] for t in chosen])
    categories = [t["category"] for t in chosen]
    prior = load_prior(PRIOR, device=device)
    encoder = load_encoder(ENCODER, device=device)
    judge = load_encoder(JUDGE, layers=["logits", "embedding"], device=device)
    tgt_f = features(encoder, images01(tgt_u8))
    gal_f = features(encoder, images01(gal_u8))
    vectors = torch.from_numpy(tgt_f)
    ref = reference_set(PRIOR, encoder)
    ref_nn = ref.nearest(tgt_f) if ref is not None else np.full(n, np.nan)
    domain = ref.domain_ratio(tgt_f) if ref is not None else np.full(n, np.nan)
    t_top, t_emb = judge_view(judge, tgt_u8)
    log(f"{n} targets ({', '.join(sorted(set(categories)))}); gallery {len(gal_f)}; {device}, "
        f"{torch.get_num_threads()} threads")

    rows = []
    unguided_rows: dict[str, dict] = {}
    nearest_base: np.ndarray | None = None  # the first row's unguided distances, for the nearest-training row
    for name in names + args.extra:
        config = PRESETS[name] if name in PRESETS else parse_extra(name)
        if args.candidates:
            config = config.replace(candidates=args.candidates, name=f"{name}:candidates={args.candidates}")
        if args.grad_min_weight is not None:
            config = config.replace(grad_min_weight=args.grad_min_weight,
                                    name=f"{config.name}:grad_min_weight={args.grad_min_weight:g}")
        m = min(n, args.paper_limit) if name == "paper" else n
        base_cfg = config.baseline().replace(name="unguided")  # one folder for every preset on these timesteps
        base_dir = folder_for(args.work, f"unguided-{config_key(base_cfg)}", base_cfg, args.fresh)
        folder = folder_for(args.work, config.name, config, args.fresh)
        decode_missing(prior, encoder, vectors[:m], base_cfg, base_dir, args.batch_size)
        decode_missing(prior, encoder, vectors[:m], config, folder, args.batch_size)
        dec, base = read_folder(folder, m), read_folder(base_dir, m)
        dec_f = features(encoder, images01(dec["images"]))
        best = ((dec_f - tgt_f[:m]) ** 2).sum(1).astype(np.float64)  # of the saved 8-bit image, as decode reports
        base_d = ((features(encoder, images01(base["images"])) - tgt_f[:m]) ** 2).sum(1).astype(np.float64)
        if nearest_base is None:
            nearest_base = base_d
        ranks = retrieval_rank(dec_f, tgt_f[:m], gal_f)
        row = {"name": config.name, "config": config.to_dict(), "n": m,
               "wall_seconds_per_image": float(dec["seconds"].mean()),
               "all": summary(best, base_d, ranks, cosines(dec_f, tgt_f[:m]), dec["evaluations"])}
        ref_err = denoising_error(prior, images01(base["images"]))
        nat = naturalness_figures(dec["images"], None, tgt_u8[:m], index[:m], base["images"], prior, ref_err)
        real = np.asarray(nat["realism"])
        nr = not_reached(best, ref_nn[:m])
        ood = domain[:m] > 1
        flagged = off_manifold(real) | nr | ood
        row["naturalness"] = {k: v for k, v in nat.items() if k not in ("realism", "judges_correct", "nn_distance")}
        row["flags"] = {"off_manifold": float(off_manifold(real).mean()), "not_reached": float(nr.mean()),
                        "out_of_domain": float(ood.mean()), "any": float(flagged.mean())}
        d_top, d_emb = judge_view(judge, dec["images"])
        row["lite2"] = judge_figures(t_top[:m], t_emb[:m], d_top, d_emb)
        key = base_dir.name
        if key not in unguided_rows:
            u_top, u_emb = judge_view(judge, base["images"])
            unguided_rows[key] = judge_figures(t_top[:m], t_emb[:m], u_top, u_emb)
        row["lite2_unguided"] = {k: v for k, v in unguided_rows[key].items() if k != "per_image"}
        row["per_sample"] = {"test_index": index[:m].tolist(), "category": categories[:m],
                             "best_distance": best.tolist(),
                             "baseline_distance": base_d.tolist(), "rank": ranks.tolist(),
                             "realism": real.tolist(), "reach_ratio": reach_ratio(best, ref_nn[:m]).tolist(),
                             "domain_ratio": domain[:m].tolist(), "flagged": flagged.tolist(),
                             **row["lite2"].pop("per_image")}
        rows.append(row)

    nearest = None
    pool_rows: dict[str, dict] = {}
    if nearest_base is not None:  # over the first row's targets, relative to its unguided samples' distances
        k = len(nearest_base)
        nearest = nearest_row(encoder, judge, emoji("train"), tgt_f[:k], tgt_u8[:k], index[:k], t_top[:k],
                              t_emb[:k], nearest_base)
        # (a data start's pool is the training emoji: the nearest-training row above is where it starts)
        pools = sorted({r["config"].get("pool", 0) for r in rows if not r["config"].get("data_start")} - {0})
        for size in pools:  # where the seed-pool rows' decodes start: the pool's nearest unguided sample
            cfg = GuidanceConfig(**{**rows[0]["config"], "pool": size, "candidates": 1, "narrow_at": 0,
                                    "narrow_keep": 0})
            imgs = pool_images(prior, cfg, size).transpose(0, 2, 3, 1)
            pool_rows[str(size)] = nearest_row(encoder, judge, imgs, tgt_f[:k], tgt_u8[:k], index[:k], t_top[:k],
                                               t_emb[:k], nearest_base)
    result = {"label": args.label, "prior": PRIOR, "encoder": ENCODER, "judge": JUDGE, "device": device,
              "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "n_targets": n,
              "targets": str(TARGETS.relative_to(HERE.parent)), "gallery": f"{len(gal_f)} emoji features "
              "(324 other held-out + 676 training)", "reference": ref.source if ref is not None else None,
              "lite2_real_pairs": real_pairs(t_top, t_emb, categories), "presets": rows,
              "nearest_training_emoji": nearest, "nearest_pool_sample": pool_rows,
              "total_seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_report(result, args.out)
    return result


def print_report(result: dict, out: Path) -> None:
    label = f" ({result['label']})" if result["label"] else ""
    print(f"## Emoji decode fidelity{label}: {result['prior']} guided by {result['encoder']}, judged by "
          f"{result['judge']}\n")
    print(f"{result['n_targets']} fixed held-out targets ({result['targets']}); gallery {result['gallery']}; "
          f"{result['device']}, {result['torch_threads']} threads, batch {result['batch_size']}.\n")
    head = ["preset", "N", "evals/img", "wall s/img", "mean dist", "rel. dist", "retr@1", "cosine",
            "category judge ÷ real", "FD ÷ unguided", "NN ratio", "realism", "flagged (off/not reached/ood)",
            "Lite2 top-5 agr. (unguided)", "Lite2 cos (unguided)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["presets"]:
        a, nat, fl, j, u = r["all"], r["naturalness"], r["flags"], r["lite2"], r["lite2_unguided"]
        lines.append("| " + " | ".join([
            r["name"], str(a["n"]), fmt(a["evaluations_per_image"]), fmt(r["wall_seconds_per_image"]),
            fmt(a["mean_distance"]), f"{a['mean_relative_distance']:.3f}", f"{a['retrieval_at_1']:.2f}",
            f"{a['mean_cosine']:.3f}", fmt(nat.get("judge_ratio")), fmt(nat.get("fd_ratio")), fmt(nat.get("nn_ratio")),
            f"{nat['realism_median']:.2f}",
            f"{fl['any']:.2f} ({fl['off_manifold']:.2f}/{fl['not_reached']:.2f}/{fl['out_of_domain']:.2f})",
            f"{j['top5_agreement']:.2f} ({u['top5_agreement']:.2f})",
            f"{j['lite2_cosine']:.3f} ({u['lite2_cosine']:.3f})"]) + " |")
    print("\n".join(lines))
    nt = result.get("nearest_training_emoji")
    if nt:
        print(f"\nNearest training emoji by Lite0 feature (of {nt['training_images']}; no decoding): rel. dist "
              f"{nt['mean_relative_distance']:.3f}, cosine {nt['mean_cosine']:.3f}, category judge ÷ real "
              f"{fmt(nt['judge_ratio'])}, Lite2 top-5 agr. {nt['top5_agreement']:.2f}, Lite2 cos "
              f"{nt['lite2_cosine']:.3f}")
    for size, pr in (result.get("nearest_pool_sample") or {}).items():
        print(f"\nNearest of the {size} seed-pool samples (unguided) by Lite0 feature: rel. dist "
              f"{pr['mean_relative_distance']:.3f}, cosine {pr['mean_cosine']:.3f}, category judge ÷ real "
              f"{fmt(pr['judge_ratio'])}, Lite2 top-5 agr. {pr['top5_agreement']:.2f}, Lite2 cos "
              f"{pr['lite2_cosine']:.3f}")
    rp = result["lite2_real_pairs"]
    for k in ("random_pairs", "same_category_pairs"):
        if rp.get(k):
            print(f"\nLite2 between real targets, {k.replace('_', ' ')} (n {rp[k]['n']}): top-5 agreement "
                  f"{rp[k]['top5_agreement']:.2f}, cosine {rp[k]['lite2_cosine']:.3f}", end="")
    print(f"\n\nJSON: {out}  ({result['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
