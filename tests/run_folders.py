"""A minimal decode folder (two samples of one target and two unguided samples) for compare's input tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_run_folder(run: Path, small_images, target_id: str = "t") -> Path:
    """``run/images/t_s00.png``, ``t_s01.png`` (the first two small images), ``run/baseline/s00.png``,
    ``s01.png`` (the next two) and a manifest naming the samples of ``target_id``."""
    (run / "images").mkdir(parents=True)
    (run / "baseline").mkdir()
    for s in range(2):
        Image.open(small_images[s]).save(run / "images" / f"t_s{s:02d}.png")
        Image.open(small_images[s + 2]).save(run / "baseline" / f"s{s:02d}.png")
    (run / "manifest.jsonl").write_text("".join(
        json.dumps({"target_id": target_id, "sample": s, "image": f"images/t_s{s:02d}.png"}) + "\n"
        for s in range(2)))
    return run
