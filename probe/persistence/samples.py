"""The samples ``probe compare`` scores: one group of decoded images per target, and the reference set.

Read from a decode / interpolate / perturb output directory (through its manifest) or from an image folder
with one sub-folder per group; :mod:`probe.persistence.scoring` says how they are scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.containment import inside
from probe.errors import InputError, UsageError
from probe.images import images_inside, list_images
from probe.manifest import Manifest
from probe.rundir import RunDir

#: What to do with samples the decode flagged off the prior's manifold (manifest ``off_manifold``).
OFF_MANIFOLD_POLICIES = ("exclude", "mark", "keep")

@dataclass
class SampleGroup:
    """The decoded samples of one target (or one sub-folder of images)."""

    group_id: str
    paths: list[Path]
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: per path in ``paths``: the decode's ``off_manifold`` flag (None = not recorded)
    off_manifold: list[bool | None] = field(default_factory=list)
    #: samples left out because the decode flagged them off-manifold (``--off-manifold exclude``)
    excluded: list[Path] = field(default_factory=list)


@dataclass
class SampleSet:
    """What ``compare`` scores: groups of samples and a reference set of images."""

    source: Path
    kind: str  # "decode" | "folders"
    groups: list[SampleGroup]
    reference: list[Path]
    reference_source: str
    #: the networks the samples were decoded with: ``{"spec", "weights", "weights_sha256"}`` (weights None =
    #: not recorded)
    decoded_encoders: list[dict[str, str | None]] = field(default_factory=list)
    #: the off-manifold flags and what was done with them (see :func:`off_manifold_summary`); None for folders
    off_manifold: dict[str, Any] | None = None

    @property
    def n_images(self) -> int:
        return sum(len(g.paths) for g in self.groups) + len(self.reference)


def _reference_from_dir(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: reference folder does not exist")
    images = list_images(folder, recursive=True)
    if not images:
        raise InputError(f"{folder}: reference folder has no images")
    return images


def _check_groups(groups: list[SampleGroup], where: Path, allow_unequal: bool) -> None:
    if not groups:
        raise InputError(f"{where}: no sample groups found")
    sizes = Counter(len(g.paths) for g in groups)
    if len(sizes) > 1 and not allow_unequal:
        common = sizes.most_common(1)[0][0]
        odd = next(g for g in groups if len(g.paths) != common)
        raise InputError(
            f"{where}: mismatched groups: {odd.group_id!r} has {len(odd.paths)} samples, most groups have "
            f"{common} (pass --allow-unequal to score them anyway)"
        )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def off_manifold_summary(groups: Sequence[SampleGroup], policy: str) -> dict[str, Any]:
    """How many samples the decode flagged off the prior's manifold, and what compare did with them.

    ``share`` is over the samples whose flag was recorded (None when none was: an older manifest).
    """
    flags = [f for g in groups for f in g.off_manifold] + [True for g in groups for _ in g.excluded]
    known = [f for f in flags if f is not None]
    n_flagged = sum(known)
    return {
        "policy": policy, "n_samples": len(flags), "n_recorded": len(known), "n_flagged": n_flagged,
        "share": n_flagged / len(known) if known else None,
        "excluded": {g.group_id: len(g.excluded) for g in groups if g.excluded},
        "too_few": [g.group_id for g in groups if g.excluded and len(g.paths) < 2],
    }


def load_decode_dir(
    out_dir: Path | str, reference: Path | str | None = None, image_key: str = "image",
    allow_unequal: bool = False, off_manifold: str = "exclude",
) -> SampleSet:
    """Groups from a decode/interpolate/perturb output directory's ``manifest.jsonl``.

    ``off_manifold`` says what to do with samples whose record has ``off_manifold: true`` (the decode's
    realism check found them unlike the prior's own samples): ``exclude`` them from the scores (a target
    left with fewer than two is NaN, "too few natural samples"), ``mark`` them (scored, reported) or
    ``keep`` them (scored as any other). Records without the flag count as unknown and are always kept.
    """
    out = Path(out_dir)
    if image_key not in ("image", "final_image"):
        raise UsageError(f"image key must be 'image' or 'final_image', got {image_key!r}")
    if off_manifold not in OFF_MANIFOLD_POLICIES:
        raise UsageError(f"off-manifold policy must be one of {', '.join(OFF_MANIFOLD_POLICIES)}, "
                         f"got {off_manifold!r}")
    manifest = Manifest.read(out)
    by_target: dict[str, dict[int, Path]] = {}
    flags: dict[str, dict[int, bool | None]] = {}
    encoders: dict[tuple[str, str | None, str], None] = {}
    meta: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(manifest, 1):
        rel = getattr(rec, image_key)
        if rel is None:
            raise InputError(f"{manifest.path}: record {lineno} ({rec.target_id}) lacks {image_key!r}")
        # a manifest names files of its own run only: "../../x" or "/etc/x" would leak other files
        path = inside(out, rel, "image", where=f"{manifest.path}: record {lineno}")
        if not path.is_file():
            raise InputError(f"{manifest.path}: record {lineno}: image {rel} does not exist")
        tid = rec.target_id
        by_target.setdefault(tid, {})[rec.sample] = path  # a resumed run may repeat: last wins
        flags.setdefault(tid, {})[rec.sample] = _flag(rec.flagged)
        if rec.encoder:
            weights = rec.encoder_weights
            encoders[(str(rec.encoder), None if weights is None else str(weights),
                      str(rec.encoder_weights_sha256 or ""))] = None
        if tid not in meta:
            walk = {"path_position": rec.path_position, "direction": rec.direction, "scale": rec.scale}
            meta[tid] = {
                "target_index": rec.target_index, "label": rec.label, "target_source": rec.target.get("source"),
                "encoder": rec.encoder, "layer": rec.layer, "prior": rec.prior,
                **{k: v for k, v in walk.items() if v is not None},
            }
            # the target's picture, embedded in the HTML report only from inside the run folder
            timg = rec.target_image
            if isinstance(timg, str) and timg and _inside(out / timg, out) and (out / timg).is_file():
                meta[tid]["target_image"] = str(out / timg)
    if not by_target:
        raise InputError(f"{manifest.path}: no records")
    groups = [
        SampleGroup(
            tid, [items[k] for k in sorted(items)],
            label=None if meta[tid].get("label") is None else str(meta[tid]["label"]), meta=meta[tid],
            off_manifold=[flags[tid][k] for k in sorted(items)],
        )
        for tid, items in by_target.items()
    ]
    _check_groups(groups, manifest.path, allow_unequal)  # on the decode as written, before any exclusion
    if off_manifold == "exclude":
        for g in groups:
            keep = [f is not True for f in g.off_manifold]
            g.excluded = [p for p, k in zip(g.paths, keep, strict=True) if not k]
            g.paths = [p for p, k in zip(g.paths, keep, strict=True) if k]
            g.off_manifold = [f for f, k in zip(g.off_manifold, keep, strict=True) if k]
    if reference is not None:
        ref, ref_source = _reference_from_dir(Path(reference)), str(reference)
    else:
        base = RunDir(out).baseline
        ref = images_inside(out, base) if base.is_dir() else []
        if not ref:
            raise InputError(f"{base}: no unguided baseline images; pass --reference DIR")
        ref_source = f"{base} (unguided samples, same prior and seeds)"
    decoded = [{"spec": spec, "weights": weights, "weights_sha256": sha} for spec, weights, sha in encoders]
    return SampleSet(out, "decode", groups, ref, ref_source, decoded, off_manifold_summary(groups, off_manifold))


def load_image_folders(
    root: Path | str, reference: Path | str | None = None, allow_unequal: bool = False
) -> SampleSet:
    """Groups from an image folder with one sub-folder per group."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if reference is None:
        base = root / "baseline"
        if not base.is_dir():
            raise UsageError(f"{root}: give --reference DIR (or a 'baseline' sub-folder) to compare against")
        ref, ref_source = _reference_from_dir(base), str(base)
        subdirs = [p for p in subdirs if p != base]
    else:
        ref, ref_source = _reference_from_dir(Path(reference)), str(reference)
        ref_dir = Path(reference).resolve()
        subdirs = [p for p in subdirs if p.resolve() != ref_dir]
    if not subdirs:
        if list_images(root):
            raise InputError(
                f"{root}: images but no sub-folders; put each group's images in its own sub-folder"
            )
        raise InputError(f"{root}: empty folder (expected one sub-folder of images per group)")
    groups = []
    for sub in subdirs:
        images = list_images(sub)
        if not images:
            raise InputError(f"{sub}: group has no images")
        groups.append(SampleGroup(sub.name, images, label=sub.name))
    _check_groups(groups, root, allow_unequal)
    return SampleSet(root, "folders", groups, ref, ref_source)


def load_samples(
    path: Path | str, reference: Path | str | None = None, image_key: str = "image",
    allow_unequal: bool = False, off_manifold: str = "exclude",
) -> SampleSet:
    """A decode output directory (has ``manifest.jsonl``) or an image folder of sub-folders."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder (expected a decode output directory or an image folder)")
    if RunDir(path).manifest.is_file():
        return load_decode_dir(path, reference, image_key, allow_unequal, off_manifold)
    return load_image_folders(path, reference, allow_unequal)


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as float32 ``H×W×3`` in ``[0, 1]``, resized to ``size`` = (width, height).

    Decoding is probe's one reader (``probe.images.read_image_array``: 16-bit, float, CMYK, palette
    and EXIF orientation read as a viewer shows them); only the resize is done here.
    """
    from PIL import Image

    from probe.images import read_image_array

    arr = read_image_array(path)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    hwc = arr.transpose(1, 2, 0)
    if size is not None and (hwc.shape[1], hwc.shape[0]) != tuple(size):
        im = Image.fromarray(np.round(np.clip(hwc, 0, 1) * 255).astype(np.uint8))
        return np.asarray(im.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return np.ascontiguousarray(hwc, dtype=np.float32)


