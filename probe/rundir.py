"""The decode folder OUT: its layout, and every path in it (the one place that spells them).

A decode (and ``interpolate``, ``perturb``, ``map --grid``, which are decodes) writes::

    OUT/manifest.jsonl         one record per decoded sample (probe.manifest)
    OUT/features.h5            the decoded images' features, one group per layer (probe.store)
    OUT/contact_sheet.png      targets x samples
    OUT/images/ final/ trajectory/   best, final and trajectory pictures (``<target>_s<NN>.png``)
    OUT/baseline/sNN.png       unguided samples with the same seeds (the compare reference)
    OUT/targets/               the target images, for the sheet
    OUT/shards/000ii-of-000NN/ the part of one shard or torchrun rank: a decode folder of its own
    OUT/.probe.lock            held while a process writes OUT
    OUT/path.json strip.png distances.png   interpolate's summary and figures
    OUT/perturb.json grid.png  perturb's (and map's grid); map.json map.png map.npz: map's
"""

from __future__ import annotations

from pathlib import Path

from probe.distributed import Shard
from probe.manifest import MANIFEST

FEATURES = "features.h5"
SHEET = "contact_sheet.png"
LOCK = ".probe.lock"


class RunDir:
    """The paths of one decode folder (``RunDir(out).manifest`` …); a shard's folder is a RunDir too."""

    #: the sub-folders a decode writes pictures into
    DIRS = ("images", "final", "baseline", "trajectory", "targets")
    #: the files a decode writes at its top
    FILES = (MANIFEST, FEATURES, SHEET)

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- top-level files
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def features(self) -> Path:
        return self.root / FEATURES

    @property
    def features_merging(self) -> Path:
        """features.h5 while a merge writes it (renamed into place when done)."""
        return self.root / (FEATURES + ".merging")

    @property
    def sheet(self) -> Path:
        return self.root / SHEET

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    # -- picture folders
    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    @property
    def trajectory(self) -> Path:
        return self.root / "trajectory"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    def baseline_image(self, seed_index: int) -> Path:
        return self.baseline / f"s{seed_index:02d}.png"

    # -- shards
    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard(self, shard: Shard) -> RunDir:
        return RunDir(self.shards / shard.name)

    # -- the walks' summaries and figures
    def walk_file(self, name: str) -> Path:
        """One of the walks' files: ``path.json``, ``strip.png``, ``distances.png`` (interpolate),
        ``perturb.json``, ``grid.png`` (perturb, map), ``map.json``, ``map.png``, ``map.npz`` (map)."""
        if name not in WALK_FILES:
            raise ValueError(f"{name}: not a file of a decode folder ({', '.join(WALK_FILES)})")
        return self.root / name

    def grid_image(self, sample: int) -> Path:
        """A walk's grid of sample ``sample``: ``grid.png`` for sample 0, ``grid_sNN.png`` for the others."""
        return self.walk_file("grid.png") if sample == 0 else self.root / f"grid_s{sample:02d}.png"


WALK_FILES = ("path.json", "strip.png", "distances.png", "perturb.json", "grid.png", "map.json", "map.png", "map.npz")
