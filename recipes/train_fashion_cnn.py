"""Recipe: train ``bundled:fashion-cnn``, the Fashion-MNIST classifier whose penultimate layer is
probe's default feature to analyse.

    python recipes/train_fashion_cnn.py            # writes probe/bundled/fashion-cnn/

Data: Debian ``dataset-fashion-mnist`` (28×28 zero-padded to 32×32). Seeded; checkpoints each epoch
under ~/.cache/probe/train/fashion-cnn and resumes from there; logs loss per step to log.csv.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from probe.datasets import CACHE_DIR, FASHION_CLASSES, fashion_mnist
from probe.hardware import native_bf16
from probe.models.nets import FashionCNN

OUT = Path(__file__).resolve().parents[1] / "probe" / "bundled" / "fashion-cnn"
MEAN, STD = 0.5, 0.5


def to_input(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=(0 - MEAN) / STD)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + 32, dx:dx + 32]


@torch.no_grad()
def accuracy(model: FashionCNN, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 1000):
        logits = model(to_input(images[i:i + 1000]))
        correct += (logits.argmax(1).numpy() == labels[i:i + 1000]).sum()
    return correct / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast for the training forward pass [on where the CPU has bf16 instructions "
                         "(AVX-512 bf16, AMX); elsewhere it is emulated and slower]")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workdir", type=Path, default=CACHE_DIR / "train" / "fashion-cnn")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16 is None:
        args.bf16 = native_bf16("cpu")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    model = FashionCNN()
    steps_per_epoch = len(x_train) // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.workdir / "ckpt.pt"
    start_epoch, wall = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start_epoch, wall = state["epoch"], state["wall"]
        print(f"resumed at epoch {start_epoch}")
    log = open(args.workdir / "log.csv", "a")
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(x_train), generator=gen).numpy()
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            x = augment(to_input(x_train[idx]), gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), torch.from_numpy(y_train[idx]), label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            log.write(f"{epoch * steps_per_epoch + s},{loss.item():.5f}\n")
        log.flush()
        wall += time.time() - t0
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} test acc {acc:.4f} ({wall:.0f}s)")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "wall": wall}, ckpt)

    acc = accuracy(model, x_test, y_test)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out / "model.safetensors")
    config = {
        "architecture": "FashionCNN", "kwargs": {"num_classes": 10, "width": 32, "embed_dim": 256, "in_chans": 1},
        "input_size": 32, "in_chans": 1, "mean": [MEAN], "std": [STD], "interpolation": "bilinear",
        "class_names": list(FASHION_CLASSES),
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "bf16": args.bf16, "test_accuracy": round(float(acc), 4), "wall_seconds": round(wall),
                     "hardware": f"CPU, {torch.get_num_threads()} threads"},
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out} (test accuracy {acc:.4f})")


if __name__ == "__main__":
    main()
