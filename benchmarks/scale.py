"""Scaling of ``probe extract`` and ``probe decode`` over processes (torchrun), with an identity check.

    python benchmarks/scale.py                         # CPU: 1 and 2 gloo processes, small sizes (< 5 min)
    python benchmarks/scale.py --procs 1,2,4 --images 512 --targets 16
    python benchmarks/scale.py --gpu                   # also 1..N GPUs (nccl), one rank per GPU

Each configuration is one real command, ``torchrun --standalone --nproc-per-node N -m probe extract|decode``
(N = 1 runs the single-process path), timed from launch to exit: process start, model loading, the
work, the rendezvous and rank 0's merge are all inside the time, so small runs understate what large
runs gain. Throughput = images (extract) or decoded samples (decode) per wall second;
efficiency(N) = throughput(N) / (N · throughput(1)).

CPU runs give every process one thread (OMP_NUM_THREADS=1, what torchrun sets for N > 1; the single
process gets the same so the rows compare processes, not threads). Every run's output is compared with
the N = 1 run's: ``identical`` says whether the merged store (all datasets) and the decode folder
(manifest records without timings, every PNG, features.h5) are equal bit for bit.

Workloads: extract — N fashion-MNIST test images (28 px PNGs) through ``timm:resnet18 --weights random``
(224 px input, real convolution cost, no download); decode — fashion-cnn embeddings of test images through
``bundled:fashion-ddpm`` with a short schedule. Result: ``benchmarks/results/scale.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DECODE_FLAGS = ["--steps", "6", "--rounds", "1", "--early-steps", "0", "--late-steps", "0", "--no-baseline"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_images(folder: Path, n: int) -> None:
    """Fashion-MNIST test images; where that Debian package is missing, 64 px crops of skimage's photos."""
    import numpy as np
    from PIL import Image

    from probe.datasets import DatasetMissing, fashion_mnist

    folder.mkdir(parents=True, exist_ok=True)
    try:
        images, _ = fashion_mnist("test", size=28)
    except DatasetMissing:
        import skimage.data

        src = skimage.data.astronaut()
        rng = np.random.default_rng(0)
        images = [src[y:y + 64, x:x + 64] for y, x in rng.integers(0, 512 - 64, size=(n, 2))]
    for i in range(n):
        Image.fromarray(np.ascontiguousarray(images[i])).save(folder / f"{i:05d}.png")


def torchrun(n: int, args: list[str], threads: int | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "probe", "-q", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return seconds


def h5_rows(path: Path) -> dict:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            values = obj[:]  # numbers compared by their bytes, strings (object arrays) by value
            out[name] = values.tolist() if values.dtype.kind in "OSU" else values.tobytes()
    with h5py.File(path) as f:
        f.visititems(visit)
    return out


def decode_snapshot(out: Path) -> dict:
    recs = [{k: v for k, v in json.loads(ln).items() if k not in ("seconds", "batch_seconds")}
            for ln in (out / "manifest.jsonl").read_text().splitlines()]
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))
             if p.name != "contact_sheet.png"}
    return {"records": recs, "files": files, "features": h5_rows(out / "features.h5")}


def rows(kind: str, results: list[dict], unit: str) -> list[dict]:
    base = next(r for r in results if r["procs"] == 1)
    for r in results:
        r[unit] = round(r["items"] / r["seconds"], 3)
        r["efficiency"] = round(r[unit] / (r["procs"] * (base["items"] / base["seconds"])), 3)
        log(f"{kind}: {r['procs']} x {r['device']}: {r['seconds']:.1f} s, {r[unit]:.2f} {unit}, "
            f"efficiency {r['efficiency']:.2f}, identical {r['identical']}")
    return results


def run(device: str, procs: list[int], n_images: int, n_targets: int, samples: int, work: Path,
        batch: int, dec_batch: int) -> dict:
    threads = 1 if device == "cpu" else None
    imgs = work / "images"
    if not imgs.is_dir():
        make_images(imgs, n_images)
    # targets for decode: fashion-cnn embeddings of the first test images (made once, single process)
    targets = work / "targets.h5"
    if not targets.exists():
        torchrun(1, ["extract", str(imgs), "-m", "bundled:fashion-cnn", "-o", str(targets), "--device", device,
                     "--workers", "0"], threads)
    ext, dec = [], []
    ref_store = ref_dec = None
    for n in procs:
        store = work / f"{device}-extract-{n}.h5"
        secs = torchrun(n, ["extract", str(imgs), "-m", "timm:resnet18", "--weights", "random", "-o", str(store),
                            "--batch-size", str(batch), "--workers", "0", "--device", device], threads)
        got = h5_rows(store)
        ref_store = got if ref_store is None else ref_store
        ext.append({"procs": n, "device": device, "items": n_images, "seconds": round(secs, 2),
                    "identical": got == ref_store})
        out = work / f"{device}-decode-{n}"
        secs = torchrun(n, ["decode", "--prior", "bundled:fashion-ddpm", "-m", "bundled:fashion-cnn", "--from",
                            str(targets), "--index", f"0:{n_targets}", "-n", str(samples), "--batch-size",
                            str(dec_batch), *DECODE_FLAGS, "-o", str(out), "--device", device], threads)
        got = decode_snapshot(out)
        ref_dec = got if ref_dec is None else ref_dec
        dec.append({"procs": n, "device": device, "items": n_targets * samples, "seconds": round(secs, 2),
                    "identical": got == ref_dec})
    return {"extract": rows("extract", ext, "images_per_s"), "decode": rows("decode", dec, "samples_per_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", default="1,2", help="CPU process counts (comma-separated; must include 1)")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--decode-batch-size", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also run on 1..all GPUs")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. how loaded the machine was)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    import torch

    procs = [int(p) for p in args.procs.split(",")]
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "gpus": torch.cuda.device_count(),
                          "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "note": args.note, "settings": {"images": args.images, "targets": args.targets,
                                               "samples": args.samples, "batch_size": args.batch_size,
                                               "decode_batch_size": args.decode_batch_size,
                                               "decode_flags": DECODE_FLAGS,
                                               "extract_model": "timm:resnet18 --weights random",
                                               "decode": "bundled:fashion-ddpm <- bundled:fashion-cnn"},
              "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_cpu:
            result["runs"]["cpu"] = run("cpu", procs, args.images, args.targets, args.samples, work,
                                        args.batch_size, args.decode_batch_size)
        if args.gpu and torch.cuda.is_available():
            gpus = list(range(1, torch.cuda.device_count() + 1))
            result["runs"]["cuda"] = run("cuda", gpus, args.images, args.targets, args.samples, work,
                                         args.batch_size, args.decode_batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
