"""Issue 6's quality check: which attributes does a fashion-cnn feature encode?

    python benchmarks/compare_quality.py                 # 20 test features x 8 samples, fast preset

Runs the real workflow through the Python API (the functions the CLI commands call): ``probe.extract`` of 20
Fashion-MNIST test images (2 per class), ``probe.decode`` of their bundled:fashion-cnn embeddings with
bundled:fashion-ddpm (8 samples each), and ``probe.compare``. Reports the persistence table and, for the
class attribute, how often a decoded sample's predicted class equals its target image's true class (chance:
10%) and the within-target agreement rate against the unguided baseline's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import probe
from probe.datasets import fashion_mnist, fashion_slug

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/compare_quality"))
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--schedule", default="fast")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    work = args.work
    img_dir = work / "targets"
    x, y = fashion_mnist("test", size=28)
    rng = np.random.default_rng(0)
    for c in range(10):
        for i in rng.choice(np.where(y == c)[0], args.per_class, replace=False):
            d = img_dir / f"{c}-{fashion_slug(c)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"test{i:05d}.png")
    store = work / "features.h5"
    cnn = probe.load_encoder("bundled:fashion-cnn")
    probe.extract(cnn, img_dir, out=store, labels="parent")
    n = 10 * args.per_class
    start = time.perf_counter()
    decoded = probe.decode(cnn, probe.resolve_targets(cnn, store=store, index=f"0:{n}"), samples=args.samples,
                           schedule=args.schedule, batch_size=args.batch_size, out=work / "decoded", overwrite=True)
    decode_s = time.perf_counter() - start
    result = json.loads(probe.compare(decoded, html=work / "report.html", chart=work / "persistence.png").to_json())

    # class accuracy of the decoded samples against the target image's true class
    records = decoded.records
    with torch.no_grad():
        pred = cnn.classify(decoded.images.to(cnn.device)).argmax(1).cpu().numpy()
    true = np.array([int(str(r.label).split("-")[0]) for r in records])  # folder "<class>-<name>"
    rows = [{k: a.get(k) for k in ("name", "mean", "ci_low", "ci_high", "verdict")} for a in result["attributes"]]
    summary = {
        "targets": n, "samples": args.samples, "schedule": args.schedule, "decode_seconds": round(decode_s, 1),
        "class_accuracy_vs_true_label": round(float((pred == true).mean()), 4), "chance": 0.1,
        "mean_relative_distance": round(float(np.mean([r.relative_distance for r in records])), 4),
        "attributes": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| attribute | persistence (0 = encoded, 1 = free) | 95% CI | verdict |")
    print("|---|---|---|---|")
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in rows:
        print(f"| {r['name']} | {fmt(r['mean'])} | {fmt(r['ci_low'])}–{fmt(r['ci_high'])} | {r['verdict']} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "attributes"}, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
