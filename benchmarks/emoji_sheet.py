"""A contact sheet of emoji_fidelity.py's decodes, one row per target, to look at before reading its numbers.

    python benchmarks/emoji_sheet.py --limit 9 --columns balanced,balanced:pool=2048,candidates=8 \
        --pool 2048 --out docs/figures/emoji9-pool.png

Columns: the target, each named configuration's decode (its work folder under --work; a red frame where
the JSON given by --result flags it), then optionally the seed pool's nearest unguided sample by Lite0
feature (--pool N: where a pool decode starts) and the nearest training emoji by Lite0 feature.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from decode_fidelity import features  # noqa: E402
from emoji_fidelity import ENCODER, PRIOR, load_targets  # noqa: E402
from preset_score import images01  # noqa: E402

from probe.datasets import emoji  # noqa: E402
from probe.diffusion.priors import load_prior  # noqa: E402
from probe.diffusion.schedules import PRESETS  # noqa: E402
from probe.models.registry import load_encoder  # noqa: E402
from probe.seed_pool import pool_images  # noqa: E402

SCALE = 3
GAP = 4
HEAD = 14


def nearest(tgt_f: np.ndarray, feats: np.ndarray) -> np.ndarray:
    d = torch.cdist(torch.from_numpy(tgt_f).double(), torch.from_numpy(feats).double())
    return d.argmin(1).numpy()


def flagged_of(result: Path | None) -> dict[str, list[bool]]:
    if result is None:
        return {}
    data = json.loads(result.read_text())
    return {r["name"]: r["per_sample"]["flagged"] for r in data["presets"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--columns", required=True, help="comma-free list separated by ';' of configuration names "
                    "(as emoji_fidelity.py names them, e.g. 'balanced;balanced:pool=2048,candidates=8')")
    ap.add_argument("--limit", type=int, default=9)
    ap.add_argument("--panels", type=int, default=1, help="side-by-side panels the rows are split into [1]")
    ap.add_argument("--pool", type=int, default=0, help="also show the nearest of this many pool samples")
    ap.add_argument("--no-training", action="store_true", help="leave out the nearest training emoji")
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "emoji_fidelity_work")
    ap.add_argument("--result", type=Path, default=None, help="an emoji_fidelity.py JSON: red frames on flagged")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    chosen, tgt_u8, _ = load_targets(args.limit)
    n = len(chosen)
    names = [c.strip() for c in args.columns.split(";") if c.strip()]
    cols: list[tuple[str, np.ndarray]] = [("target", tgt_u8)]
    for name in names:
        folder = args.work / name.replace(":", "_").replace(",", "_").replace("=", "-")
        cols.append((name.split(":", 1)[-1] if ":" in name else name,
                     np.stack([np.load(folder / f"t{k:03d}.npz")["image"] for k in range(n)])))
    encoder = load_encoder(ENCODER)
    tgt_f = features(encoder, images01(tgt_u8))
    if args.pool:
        prior = load_prior(PRIOR)
        imgs = pool_images(prior, PRESETS["pooled"], args.pool).transpose(0, 2, 3, 1)
        pick = nearest(tgt_f, features(encoder, images01(imgs)))
        cols.append((f"pool nearest ({args.pool})", imgs[pick]))
    if not args.no_training:
        train = emoji("train")
        cols.append(("training nearest", train[nearest(tgt_f, features(encoder, images01(train)))]))
    flags = flagged_of(args.result)

    side = 32 * SCALE
    per = -(-n // args.panels)
    panel_w = len(cols) * (side + GAP) + 3 * GAP
    sheet = Image.new("RGB", (args.panels * panel_w, HEAD + per * (side + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (label, images) in enumerate(cols):
        flagged = next((v for k, v in flags.items() if k.endswith(label)), None)
        for k in range(n):
            x = (k // per) * panel_w + GAP + c * (side + GAP)
            y = HEAD + GAP + (k % per) * (side + GAP)
            if k % per == 0:
                draw.text((x, 1), label[:16], fill="black")
            sheet.paste(Image.fromarray(images[k]).resize((side, side), Image.NEAREST), (x, y))
            if flagged is not None and flagged[k]:
                draw.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], outline="red", width=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{n} targets x {len(cols)} columns -> {args.out}")


if __name__ == "__main__":
    main()
