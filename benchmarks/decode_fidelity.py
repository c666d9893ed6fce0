"""How faithfully each guidance preset decodes a feature, and what it costs (issue 4: choose the defaults).

    python benchmarks/decode_fidelity.py                                   # fashion-ddpm + fashion-cnn
    python benchmarks/decode_fidelity.py --extra fast:steps=25,rounds=2 --extra fast:weight=8
    python benchmarks/decode_fidelity.py --prior bundled:emoji-ddpm --encoder bundled:efficientnet_lite0

Targets are the encoder's features of N held-out test images (Fashion-MNIST test, class-balanced and
seeded; or the held-out emoji), one decode per target with seed = target index, so every preset sees the
same (target, seed) pairs. The gallery is 1,000 other held-out images' features, disjoint from the
targets. Per preset:

  mean best distance     ‖f(best image) − f*‖², the best image being the decoder's output (saved 8-bit PNG)
  relative distance      best distance / distance of the unguided sample of the same seed and timesteps
                         (``config.baseline()``), per sample; mean and median
  retrieval@1            share of decoded images whose feature is nearer to its own target than to any of
                         the gallery's features (``probe.metrics.retrieval_rank`` == 0)
  cosine                 mean cosine between decoded feature and target
  evaluations / image    guided UNet + encoder forward/backward passes (mean of the sampler's count)
  wall s / image         guided decode only, at ``--batch-size`` targets per batch on this machine
  × fewer than paper     the paper preset's evaluations per image over this preset's

The paper preset (~12,960 evaluations per image), and any ``--extra paper:...``, runs on the first
``--paper-n`` targets only; every other preset is also reported on that same paired subset, with the
verdict of issue 4's target: retrieval@1 at least the paper's, mean relative distance within 10% of the
paper's, ≥ 20× fewer evaluations. ``--max-minutes`` shrinks a preset's N when a short calibration run,
or its first batch, projects a longer run (the output says so). ``--paper-from JSON`` reuses the paper
row of an earlier run with the same prior weights, encoder, targets and gallery (checked), so that
exploring presets does not pay the paper's cost again: on a 2-core CPU it is about 6 minutes per image.
Writes a markdown table to stdout and everything (per-sample numbers included) as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from probe.datasets import emoji, fashion_mnist
from probe.diffusion.priors import load_prior
from probe.diffusion.sampler import concat_features, sample
from probe.diffusion.schedules import PRESETS, GuidanceConfig
from probe.metrics import retrieval_rank
from probe.models.registry import load_encoder
from probe.naturalness import denoising_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naturalness import images01, naturalness_figures  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_EVAL_RATIO = 20.0
TARGET_REL_SLACK = 1.10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------
# Presets from the command line
# --------------------------------------------------------------------------------------------------------
def _parse_value(field: dataclasses.Field, raw: str) -> object:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind.endswith("| None"):
        if raw.lower() == "none":
            return None
        kind = kind.split("|")[0].strip()
    if kind == "bool":
        low = raw.lower()
        if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise SystemExit(f"--extra: {field.name} takes true/false, not {raw!r}")
        return low in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def parse_overrides(text: str, option: str) -> dict[str, object]:
    """``key=val,key=val`` -> GuidanceConfig field values, typed by the field (``option`` names the flag in errors)."""
    fields = {f.name: f for f in dataclasses.fields(GuidanceConfig)}
    overrides: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields or key == "name":
            raise SystemExit(f"{option}: expected key=value with key one of "
                             f"{', '.join(k for k in fields if k != 'name')}")
        try:
            overrides[key] = _parse_value(fields[key], raw.strip())
        except ValueError as exc:
            raise SystemExit(f"{option}: bad value for {key}: {raw!r}") from exc
    return overrides


def parse_extra(text: str) -> GuidanceConfig:
    """``BASE:key=val,key=val`` (BASE a preset name) -> a GuidanceConfig named by the whole string."""
    base, _, rest = text.partition(":")
    if base not in PRESETS:
        raise SystemExit(f"--extra {text!r}: base must be one of {', '.join(PRESETS)}")
    overrides = parse_overrides(rest, f"--extra {text!r}")
    return PRESETS[base].replace(name=text, **overrides)


def configs_from_args(args: argparse.Namespace) -> list[GuidanceConfig]:
    out: list[GuidanceConfig] = []
    for name in filter(None, (s.strip() for s in args.presets.split(","))):
        if name not in PRESETS:
            raise SystemExit(f"--presets: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        out.append(PRESETS[name])
    out += [parse_extra(e) for e in args.extra]
    # the paper preset runs last, so that a --max-minutes budget shrinks it rather than the cheap presets
    out.sort(key=lambda c: c.name.split(":")[0] == "paper")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise SystemExit("--presets/--extra: a preset is listed twice")
    if not out:
        raise SystemExit("nothing to run: give --presets and/or --extra")
    return out


# --------------------------------------------------------------------------------------------------------
# Targets and gallery
# --------------------------------------------------------------------------------------------------------
def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, 3] -> float [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions into ``labels`` interleaved class by class (each class shuffled), so every prefix is
    as class-balanced as it can be."""
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    longest = max(len(p) for p in per_class)
    return np.array([p[k] for k in range(longest) for p in per_class if k < len(p)], dtype=np.int64)


def choose_images(data: str, n: int, gallery_size: int, seed: int) -> dict:
    """Target and gallery images (uint8 arrays) with their provenance, disjoint by construction."""
    rng = np.random.default_rng(seed)
    if data == "fashion":
        x, y = fashion_mnist("test")
        perm = rng.permutation(len(x))
        gal_idx = np.sort(perm[:gallery_size])
        rest = perm[gallery_size:]
        tgt_idx = rest[balanced_order(y[rest], rng)[:n]]
        if len(tgt_idx) < n:
            raise SystemExit(f"only {len(tgt_idx)} test images are left for targets")
        return {"targets": x[tgt_idx], "target_index": tgt_idx.tolist(), "target_label": y[tgt_idx].tolist(),
                "gallery": x[gal_idx], "gallery_source": f"{len(gal_idx)} other Fashion-MNIST test images",
                "target_source": "Fashion-MNIST test (class-balanced, seeded)"}
    held = emoji("test")
    if n >= len(held):
        raise SystemExit(f"--n {n} leaves no held-out emoji for the gallery ({len(held)} in all)")
    perm = rng.permutation(len(held))
    tgt_idx, rest = perm[:n], np.sort(perm[n:])
    gallery = held[rest][:gallery_size]
    source = f"{len(gallery)} other held-out emoji"
    if len(gallery) < gallery_size:  # only 379 emoji are held out: fill up with training emoji
        train = emoji("train")
        fill = np.sort(rng.permutation(len(train))[:gallery_size - len(gallery)])
        gallery = np.concatenate([gallery, train[fill]])
        source += f" + {len(fill)} training emoji (too few held out)"
    return {"targets": held[tgt_idx], "target_index": tgt_idx.tolist(), "target_label": None,
            "gallery": gallery, "gallery_source": source, "target_source": "held-out emoji (seeded)"}


def prior_fingerprint(prior) -> str:
    """sha256 over the prior's weights (UNet, and VAE if any): names a prior independently of its path."""
    h = hashlib.sha256()
    for module in (prior.unet, prior.vae):
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


PER_SAMPLE_KEYS = ("target_index", "seed", "best_distance", "baseline_distance", "rank", "evaluations",
                   "best_step", "skipped_guidance")


def load_paper_rows(paths: list[Path], expect: dict, target_index: list[int]) -> dict:
    """The paper rows of earlier runs, checked to have decoded these targets the same way, merged into
    one row over targets 0..k−1 (the shards of --paper-start must together cover a prefix)."""
    per: dict[int, dict] = {}
    cos_sum, seconds = 0.0, 0.0
    notes = []
    for path in paths:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--paper-from {path}: cannot read it ({exc})") from exc
        row = next((r for r in old.get("presets", []) if r.get("name") == "paper"), None)
        if row is None:
            raise SystemExit(f"--paper-from {path}: it holds no paper row")
        for key, want in expect.items():
            if old.get(key) != want:
                raise SystemExit(f"--paper-from {path}: {key} differs ({old.get(key)!r} there, {want!r} here)")
        ps = row["per_sample"]
        for j, seed in enumerate(ps["seed"]):
            if seed >= len(target_index) or ps["target_index"][j] != target_index[seed]:
                raise SystemExit(f"--paper-from {path}: its target {seed} is not this run's")
            if seed in per:
                raise SystemExit(f"--paper-from {path}: target {seed} is also in an earlier file")
            per[seed] = {k: ps[k][j] for k in PER_SAMPLE_KEYS}
        cos_sum += row["all"]["mean_cosine"] * row["all"]["n"]  # a mean over the union, from the parts' means
        seconds += row["wall_seconds"]
        notes.append(f"{path} ({len(ps['seed'])} targets, {row['wall_seconds_per_image']:.0f} s/image)")
    k = len(per)
    if sorted(per) != list(range(k)):
        raise SystemExit(f"--paper-from: the files cover targets {sorted(per)}, not 0..{k - 1}")
    merged = {key: [per[i][key] for i in range(k)] for key in PER_SAMPLE_KEYS}
    figures = summary(np.asarray(merged["best_distance"], dtype=np.float64),
                      np.asarray(merged["baseline_distance"], dtype=np.float64), np.asarray(merged["rank"]),
                      cos_sum / k, np.asarray(merged["evaluations"], dtype=np.float64))
    return {"name": "paper", "config": PRESETS["paper"].to_dict(), "requested_n": k,
            "note": "reused from " + "; ".join(notes), "analytic_evaluations": PRESETS["paper"].evaluations(1000),
            "wall_seconds_per_image": seconds / k, "wall_seconds": seconds,
            "all": figures, "paired": figures, "per_sample": merged}


@torch.no_grad()
def features(encoder, images01: torch.Tensor, batch: int = 100) -> np.ndarray:
    """The encoder's (concatenated) features, computed exactly as the sampler's distance computes them."""
    out = []
    for i in range(0, len(images01), batch):
        x = images01[i:i + batch].to(encoder.device)
        out.append(concat_features(encoder, encoder.resize(x)).float().cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------------
# Running the presets
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """Per-sample numbers of one preset (index i = target i, seed i)."""

    config: GuidanceConfig
    best_distance: list[float] = dataclasses.field(default_factory=list)
    evaluations: list[int] = dataclasses.field(default_factory=list)
    best_step: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    images: list[torch.Tensor] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    requested: int = 0
    start: int = 0
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.best_distance)


def calibrate(prior, encoder, targets: torch.Tensor, config: GuidanceConfig, batch: int) -> float:
    """Projected guided seconds per image of ``config``, from a 6-evaluation run of the same batch size
    (the cost of one evaluation does not depend on the schedule); the faster of two runs, as the first
    call also pays one-off warm-up costs."""
    probe = config.replace(name=f"{config.name}/calibration", steps=3, rounds=2, early_steps=0, stop_patience=0,
                           max_distance=0.0)
    seconds = min(sample(prior, encoder, targets[:batch], list(range(batch)), probe).seconds for _ in range(2))
    T = prior.num_train_timesteps
    return seconds / probe.evaluations(T) * config.evaluations(T) / batch


def run_guided(prior, encoder, targets: torch.Tensor, config: GuidanceConfig, n: int, batch: int,
               max_minutes: float, start: int = 0) -> Run:
    """Decode targets start .. start+n−1, target i with seed i."""
    run = Run(config=config, requested=n, start=start)
    budget = max_minutes * 60
    limit = n
    if budget > 0 and not config.unguided:
        est = calibrate(prior, encoder, targets, config, min(batch, n))
        log(f"  {config.name}: calibration projects {est:.2f} s/image, ~{est * n / 60:.1f} min for {n}")
        if est * n > budget:
            limit = max(1, int(budget // est))
            run.note = (f"N shrunk from {n} to {limit}: a calibration run projected {est:.1f} s/image, "
                        f"~{est * n / 60:.1f} min for {n} > --max-minutes {max_minutes:g}")
            log(f"  {config.name}: {run.note}")
    i = 0
    while i < limit:
        seeds = list(range(start + i, start + min(limit, i + batch)))
        ticker = {"last": time.perf_counter()}

        def progress(step: int, total: int, best: torch.Tensor, seeds=seeds, ticker=ticker) -> None:
            if time.perf_counter() - ticker["last"] > 60:
                ticker["last"] = time.perf_counter()
                log(f"  {config.name}: images {seeds[0]}-{seeds[-1]}, step {step}/{total}, "
                    f"mean best distance {best.mean():.4g}")

        res = sample(prior, encoder, targets[seeds[0]:seeds[-1] + 1], seeds, config, callback=progress)
        run.best_distance += res.best_distance.tolist()
        run.evaluations += res.evaluations.tolist()
        run.best_step += res.best_step.tolist()
        run.skipped += res.skipped.tolist()
        run.images.append(res.best_images)
        run.seconds += res.seconds
        i += len(seeds)
        per_image = run.seconds / i
        log(f"  {config.name}: {i}/{limit} images, {per_image:.2f} s/image")
        if i == len(seeds) and budget > 0 and i < limit and per_image * limit > budget:
            new = max(i, int(budget // per_image))
            run.note = (f"N shrunk from {n} to {new}: the first batch took {per_image:.1f} s/image, "
                        f"{limit} would take ~{per_image * limit / 60:.1f} min > --max-minutes {max_minutes:g}")
            limit = new
            log(f"  {config.name}: {run.note}")
    return run


def run_baseline(prior, encoder, targets: torch.Tensor, config: GuidanceConfig, lo: int, hi: int, batch: int,
                 cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Distances and 8-bit images of the unguided samples (same seeds and timesteps) for targets lo..hi−1,
    cached by config and seed (a preset over more targets reuses what a shorter one computed)."""
    base = config.baseline()
    key = json.dumps({k: v for k, v in base.to_dict().items() if k != "name"}, sort_keys=True)
    have: dict[int, tuple[float, np.ndarray]] = cache.setdefault(key, {})
    missing = [i for i in range(lo, hi) if i not in have]
    for j in range(0, len(missing), batch):
        seeds = missing[j:j + batch]
        res = sample(prior, encoder, targets[seeds], seeds, base)
        have.update(zip(seeds, zip(res.final_distance.tolist(), uint8_images(res.final_images))))
    return (np.asarray([have[i][0] for i in range(lo, hi)], dtype=np.float64),
            np.stack([have[i][1] for i in range(lo, hi)]))


def uint8_images(images01: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> uint8 [N, H, W] (grey) or [N, H, W, 3] (colour), as the judges take them."""
    u8 = torch.round(images01.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    return u8[:, 0] if u8.shape[1] == 1 else u8.transpose(0, 2, 3, 1)


def cosines(dec_f: np.ndarray, tgt_f: np.ndarray) -> np.ndarray:
    return (dec_f * tgt_f).sum(1) / np.maximum(np.linalg.norm(dec_f, axis=1) * np.linalg.norm(tgt_f, axis=1), 1e-12)


def summary(best: np.ndarray, base: np.ndarray, ranks: np.ndarray, cosine: np.ndarray | float,
            evals: np.ndarray) -> dict:
    """A preset's figures from its per-sample numbers (``cosine`` per sample, or already a mean)."""
    rel = best / np.maximum(base, 1e-12)
    return {"n": int(len(best)), "mean_distance": float(best.mean()), "median_distance": float(np.median(best)),
            "mean_baseline_distance": float(base.mean()),
            "mean_relative_distance": float(rel.mean()), "median_relative_distance": float(np.median(rel)),
            "retrieval_at_1": float((ranks == 0).mean()), "mean_rank": float(ranks.mean()),
            "mean_cosine": float(np.mean(cosine)), "evaluations_per_image": float(np.mean(evals))}


def judge(result: dict) -> None:
    """Add each preset's verdict against the paper row, on the paired subset, in place.

    Two views of the relative distance: the issue's (each preset's distance over its own unguided sample
    of the same seed) and one over the paper's unguided sample of the same seed for every preset. The
    first divides by a different image per schedule (1000 DDPM steps vs 50 DDIM steps from the same
    noise), so one unguided sample that happens to land near its target dominates a mean over few
    targets; the second is a paired comparison of the distances themselves.
    """
    rows = result["presets"]
    paper = next((r for r in rows if r["name"] == "paper"), None)
    if paper is None:
        return
    base = dict(zip(paper["per_sample"]["seed"], paper["per_sample"]["baseline_distance"]))
    for r in rows:
        if "paired" not in r:
            continue
        ps = r["per_sample"]
        ratios = [b / max(base[s], 1e-12) for s, b in zip(ps["seed"], ps["best_distance"]) if s in base]
        r["paired"]["mean_relative_distance_paper_baseline"] = float(np.mean(ratios))
    ref = paper["paired"]
    for r in rows:
        if r is paper or "paired" not in r:
            continue
        m, ratio = r["paired"], r["fewer_than_paper"]
        ok_r = m["retrieval_at_1"] >= ref["retrieval_at_1"]
        ok_d = m["mean_relative_distance"] <= TARGET_REL_SLACK * ref["mean_relative_distance"]
        ok_p = m["mean_relative_distance_paper_baseline"] <= \
            TARGET_REL_SLACK * ref["mean_relative_distance_paper_baseline"]
        ok_e = ratio is not None and ratio >= TARGET_EVAL_RATIO
        r["verdict"] = {"retrieval_at_least_paper": bool(ok_r), "relative_distance_within_10pct": bool(ok_d),
                        "relative_distance_within_10pct_paper_baseline": bool(ok_p),
                        "evaluations_20x_fewer": bool(ok_e), "meets_target": bool(ok_r and ok_d and ok_e),
                        "meets_target_paper_baseline": bool(ok_r and ok_p and ok_e)}


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------
def fmt(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}g}" if abs(x) < 1 else f"{x:.{nd + 1}g}"


def table(rows: list[dict], paired: bool = False) -> str:
    head = ["preset", "N", "evals/img", "× fewer than paper", "wall s/img", "mean dist", "rel. dist mean",
            "rel. dist median", "retrieval@1", "cosine"]
    if paired:
        head[6:8] = ["rel. dist mean (own)", "rel. dist median (own)", "rel. dist mean (paper's)"]
        head += ["meets target (own)", "meets target (paper's)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["paired"] if paired else r["all"]
        ratio = r["fewer_than_paper"]
        cells = [r["name"], str(m["n"]), fmt(m["evaluations_per_image"]), "—" if ratio is None else f"{ratio:.1f}",
                 fmt(r["wall_seconds_per_image"]), fmt(m["mean_distance"]), f"{m['mean_relative_distance']:.3f}",
                 f"{m['median_relative_distance']:.3f}", f"{m['retrieval_at_1']:.2f}", f"{m['mean_cosine']:.3f}"]
        if paired:
            cells.insert(8, f"{m.get('mean_relative_distance_paper_baseline', math.nan):.4f}")
            cells[6] = f"{m['mean_relative_distance']:.4f}"
            v = r.get("verdict")
            for dist_key, meets in (("relative_distance_within_10pct", "meets_target"),
                                    ("relative_distance_within_10pct_paper_baseline",
                                     "meets_target_paper_baseline")):
                cells.append("(reference)" if v is None else ("yes" if v[meets] else "no ("
                             + ", ".join(k for k, ok in (("r@1", v["retrieval_at_least_paper"]),
                                                         ("dist", v[dist_key]),
                                                         ("evals", v["evaluations_20x_fewer"])) if not ok) + ")"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--prior", default="bundled:fashion-ddpm", help="any load_prior spec [bundled:fashion-ddpm]")
    ap.add_argument("--encoder", default="bundled:fashion-cnn", help="any encoder spec [bundled:fashion-cnn]")
    ap.add_argument("--encoder-weights", default=None, help="--weights for timm:/open_clip: specs (PATH|random)")
    ap.add_argument("--layers", default=None, help="comma-separated encoder layers [the embedding]")
    ap.add_argument("--data", choices=("auto", "fashion", "emoji"), default="auto",
                    help="target images: auto = fashion for 1-channel priors, emoji for 3-channel ones")
    ap.add_argument("--presets", default="fast,balanced,paper", help="comma-separated preset names")
    ap.add_argument("--extra", action="append", default=[], metavar="BASE:key=val,...",
                    help="a custom config: a preset with overrides, e.g. fast:steps=25,rounds=2 (repeatable)")
    ap.add_argument("--n", type=int, default=32, help="targets per preset [32]")
    ap.add_argument("--paper-n", type=int, default=8, help="targets for the paper preset (the first ones) [8]")
    ap.add_argument("--paper-start", type=int, default=0,
                    help="the paper preset decodes targets START..START+paper-n−1 (to spread it over several "
                         "processes; merge with --paper-from) [0]")
    ap.add_argument("--gallery", type=int, default=1000, help="held-out features to retrieve among [1000]")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="targets per sampler call, each running the preset's candidate chains [8]")
    ap.add_argument("--max-minutes", type=float, default=30.0,
                    help="per preset: shrink N when a calibration run or the first batch projects longer "
                         "than this (0: never) [30]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the target/gallery choice [0]")
    ap.add_argument("--device", default=None, help="[cuda if available, else cpu]")
    ap.add_argument("--paper-from", type=Path, nargs="+", default=None,
                    help="reuse the paper rows of these earlier decode_fidelity JSONs (same prior/encoder/targets)")
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_fidelity.json")
    ap.add_argument("--no-naturalness", action="store_true",
                    help="skip the independent naturalness judges (benchmarks/naturalness.py)")
    ap.add_argument("--rescore", action="store_true",
                    help="decode nothing: recompute the verdicts of the --out JSON from its per-sample numbers")
    args = ap.parse_args(argv)
    if args.rescore:
        result = json.loads(args.out.read_text())
        judge(result)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_report(result, args.out)
        return result
    if args.n < 1 or args.paper_n < 1 or args.batch_size < 1 or args.gallery < 1:
        ap.error("--n, --paper-n, --batch-size and --gallery must be >= 1")
    configs = configs_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()

    prior = load_prior(args.prior, device=device)
    layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
    encoder = load_encoder(args.encoder, layers=layers, weights=args.encoder_weights, device=device)
    data = args.data if args.data != "auto" else ("fashion" if prior.channels == 1 else "emoji")
    T = prior.num_train_timesteps
    wants_paper = any(c.name == "paper" for c in configs)
    n_paper = args.paper_n
    n_max = max(args.n, args.paper_start + args.paper_n)
    chosen = choose_images(data, n_max, args.gallery, args.seed)
    targets_img = as_tensor(chosen["targets"])
    tgt_f = features(encoder, targets_img)
    gal_f = features(encoder, as_tensor(chosen["gallery"]))
    targets = torch.from_numpy(tgt_f)
    log(f"{args.prior} + {args.encoder} on {device} ({torch.get_num_threads()} threads): {len(tgt_f)} targets "
        f"({chosen['target_source']}), gallery {chosen['gallery_source']}, {tgt_f.shape[1]}-d features")

    fingerprint = prior_fingerprint(prior)
    reused = load_paper_rows(args.paper_from, {
        "prior_sha256": fingerprint, "encoder": args.encoder, "encoder_weights": args.encoder_weights,
        "layers": encoder.layers, "data": data, "seed": args.seed, "gallery": chosen["gallery_source"]},
        chosen["target_index"]) if args.paper_from else None
    if reused is not None and wants_paper:
        raise SystemExit("give either the paper preset or --paper-from, not both")
    paper_evals_analytic = PRESETS["paper"].evaluations(T)
    runs: dict[str, Run] = {}
    baselines: dict[str, dict[int, float]] = {}
    decoded: dict[str, np.ndarray] = {}
    natural: dict[str, dict] = {}

    def report() -> dict:
        """Rows and verdicts of the presets run so far, written to --out (after every preset, so a run
        cut short by a time limit still leaves the finished presets' numbers)."""
        paper_run = runs.get("paper")  # the paired subset: the targets the paper preset decoded
        pair = (paper_run.start, paper_run.start + paper_run.n) if paper_run is not None else \
            ((0, reused["all"]["n"]) if reused else None)
        n_pair = pair[1] - pair[0] if pair else None
        rows = [reused] if reused is not None else []
        for name, run in runs.items():
            lo, hi = run.start, run.start + run.n
            base, base_images = run_baseline(prior, encoder, targets, run.config, lo, hi, args.batch_size, baselines)
            best = np.asarray(run.best_distance, dtype=np.float64)
            evals = np.asarray(run.evaluations, dtype=np.float64)
            if name not in decoded:
                decoded[name] = features(encoder, torch.cat(run.images))
            dec_f = decoded[name]
            ranks, cos = retrieval_rank(dec_f, tgt_f[lo:hi], gal_f), cosines(dec_f, tgt_f[lo:hi])
            row = {"name": name, "config": run.config.to_dict(), "requested_n": run.requested, "note": run.note,
                   "analytic_evaluations": run.config.evaluations(T),
                   "wall_seconds_per_image": run.seconds / run.n, "wall_seconds": run.seconds,
                   "all": summary(best, base, ranks, cos, evals),
                   "per_sample": {"target_index": chosen["target_index"][lo:hi], "seed": list(range(lo, hi)),
                                  "best_distance": best.tolist(), "baseline_distance": base.tolist(),
                                  "rank": ranks.tolist(),
                                  "evaluations": run.evaluations, "best_step": run.best_step,
                                  "skipped_guidance": run.skipped}}
            if name not in natural and not run.config.unguided and not args.no_naturalness:
                natural[name] = naturalness_figures(
                    uint8_images(torch.cat(run.images)), None if chosen["target_label"] is None else
                    np.asarray(chosen["target_label"][lo:hi]), chosen["targets"][lo:hi],
                    np.asarray(chosen["target_index"][lo:hi]), base_images, prior,
                    denoising_error(prior, images01(base_images)))
            if name in natural:
                row["naturalness"] = {k: v for k, v in natural[name].items()
                                      if k not in ("realism", "judges_correct", "nn_distance")}
                row["per_sample"].update(realism=natural[name]["realism"],
                                         judges_correct=natural[name].get("judges_correct"))
            if pair is not None and lo <= pair[0] and pair[1] <= hi:
                a, b = pair[0] - lo, pair[1] - lo
                row["paired"] = summary(best[a:b], base[a:b], ranks[a:b], cos[a:b], evals[a:b])
            rows.append(row)

        paper_row = next((r for r in rows if r["name"] == "paper"), None)
        paper_evals = paper_row["all"]["evaluations_per_image"] if paper_row else float(paper_evals_analytic)
        for r in rows:
            e = r["all"]["evaluations_per_image"]
            r["fewer_than_paper"] = paper_evals / e if e > 0 else None

        result = {
            "prior": args.prior, "prior_sha256": fingerprint, "encoder": args.encoder,
            "encoder_weights": args.encoder_weights,
            "layers": encoder.layers, "data": data, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu",
            "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "seed": args.seed, "n": args.n, "paper_n": n_pair,
            "paper_targets": f"{pair[0]}:{pair[1]}" if pair else None,
            "target_source": chosen["target_source"], "target_index": chosen["target_index"],
            "target_label": chosen["target_label"], "gallery": chosen["gallery_source"],
            "feature_dim": int(tgt_f.shape[1]),
            "paper_evaluations_per_image": paper_evals,
            "paper_evaluations_source": ("analytic (paper preset not run)" if paper_row is None else
                                         "measured in earlier runs (--paper-from)" if reused else "measured"),
            "target": {"retrieval_at_1": ">= paper", "mean_relative_distance": f"<= {TARGET_REL_SLACK} x paper",
                       "evaluations": f">= {TARGET_EVAL_RATIO:g}x fewer than paper"},
            "complete": len(runs) == len(configs),
            "presets": rows, "total_seconds": time.perf_counter() - t0,
        }
        judge(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    for config in configs:
        is_paper = config.name.split(":")[0] == "paper"
        n, start = (n_paper, args.paper_start) if is_paper else (args.n, 0)
        log(f"{config.name}: {n} images, {config.evaluations(T)} evaluations each without early stop")
        runs[config.name] = run_guided(prior, encoder, targets, config, n, args.batch_size, args.max_minutes,
                                       start)
        result = report()
    print_report(result, args.out, wants_paper)
    return result


def print_report(result: dict, out: Path, wants_paper: bool = True) -> None:
    rows = result["presets"]
    paper_row = next((r for r in rows if r["name"] == "paper"), None)
    print(f"## Decode fidelity: {result['prior']} guided by {result['encoder']} ({'+'.join(result['layers'])}, "
          f"{result['feature_dim']}-d)\n")
    print(f"{result['device']}, {result['torch_threads']} threads, batch {result['batch_size']}; targets: "
          f"{result['target_source']}; gallery: {result['gallery']}; target i decoded with seed i.\n")
    print(f"All targets (paper: {fmt(result['paper_evaluations_per_image'])} evaluations per image, "
          f"{result['paper_evaluations_source']}):\n")
    print(table(rows))
    if paper_row is not None:
        print(f"\nPaired subset: the first {result['paper_n']} target(s), the same seeds for every preset. "
              f"Target for the default: retrieval@1 ≥ paper, mean relative distance ≤ {TARGET_REL_SLACK:g}× "
              f"paper, ≥ {TARGET_EVAL_RATIO:g}× fewer evaluations. 'own' divides by each preset's unguided "
              "sample, 'paper's' by the paper schedule's unguided sample of the same seed:\n")
        print(table([r for r in rows if "paired" in r], paired=True))
    elif wants_paper:
        print("\n(paper preset did not finish any image)")
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r["note"]]
    skipped = [f"- {r['name']}: guidance skipped (non-finite gradient) on {sum(r['per_sample']['skipped_guidance'])}"
               " rounds" for r in rows if sum(r["per_sample"]["skipped_guidance"])]
    if notes or skipped:
        print("\nNotes:\n" + "\n".join(notes + skipped))
    print(f"\nJSON: {out}  ({result['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
