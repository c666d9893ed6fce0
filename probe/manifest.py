"""The decode manifest: one typed record per decoded image, and the ``manifest.jsonl`` file that holds them.

Every decoding workflow (decode, interpolate, perturb, map --grid) writes ``OUT/manifest.jsonl``, one JSON
object per decoded sample; every reader (compare, the walk reports, map overlays, benchmarks) reads it
back through :class:`Manifest`, so a key is spelt in one place only.

Compatibility rules:
  * reading tolerates keys it does not know (a newer probe wrote them): they are kept in
    :attr:`SampleRecord.extra` and written back unchanged;
  * only ``target_id``, ``sample`` and ``image`` are required; every other field may be missing
    (a hand-written manifest, an older probe) and reads as ``None``;
  * per-sample quality fields (``naturalness``, ``off_manifold``) and the walk fields (path position,
    direction and scale, map grid cell) are optional typed fields, written only when set.

``file_name`` (the image's path relative to the folder that holds the record) is written into every
line, and :func:`write_metadata` writes ``OUT/images/metadata.jsonl`` in the layout of Hugging Face
``datasets``' ``imagefolder`` (``file_name`` relative to ``images/``), so
``load_dataset("imagefolder", data_dir="OUT/images")`` reads the decoded images with their records.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.errors import InputError

MANIFEST = "manifest.jsonl"
METADATA = "metadata.jsonl"  # Hugging Face imagefolder's file name
REQUIRED = ("target_id", "sample", "image")


@dataclass(frozen=True)
class SampleRecord:
    """One decoded sample: which target, which seed, where its images are, what distance it reached."""

    target_id: str
    sample: int
    image: str  # best image, relative to the output folder
    target_index: int | None = None
    seed: int | None = None
    final_image: str | None = None
    baseline_image: str | None = None
    trajectory_image: str | None = None
    best_distance: float | None = None
    final_distance: float | None = None
    baseline_distance: float | None = None
    relative_distance: float | None = None
    cosine: float | None = None
    best_step: int | None = None
    best_timestep: int | None = None
    stopped_step: int | None = None
    steps: int | None = None
    evaluations: int | None = None
    skipped_steps: int | None = None
    seconds: float | None = None
    batch_seconds: float | None = None
    target: Mapping[str, Any] = field(default_factory=dict)  # kind, source, index, label, image_path
    prior: str | None = None
    encoder: str | None = None
    layer: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    # per-sample quality (issue 10): written only when measured
    naturalness: float | None = None
    off_manifold: bool | None = None
    # interpolate
    path_position: float | None = None
    path_kind: str | None = None
    path_index: int | None = None
    # perturb
    direction: str | None = None
    direction_index: int | None = None
    scale: float | None = None
    scale_index: int | None = None
    explained_variance_ratio: float | None = None
    direction_info: Mapping[str, Any] | None = None
    base: Mapping[str, Any] | None = None
    # map --grid
    grid_row: int | None = None
    grid_col: int | None = None
    map_x: float | None = None
    map_y: float | None = None
    map_method: str | None = None
    # keys this version does not know, kept so a rewrite loses nothing
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        """The best image relative to the output folder (Hugging Face's ``file_name`` column)."""
        return self.image

    @property
    def label(self) -> Any:
        """The target's label (class name, prompt …) or None."""
        return self.target.get("label") if self.target else None

    @property
    def cell(self) -> tuple[str, int]:
        return self.target_id, self.sample

    def replace(self, **changes: Any) -> SampleRecord:
        return dataclasses.replace(self, **changes)

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one manifest line: decode fields always, optional ones when set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in _WRITTEN_WHEN_SET and value is None:
                continue
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        out["file_name"] = self.file_name
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "record") -> SampleRecord:
        """Build a record from a JSON object; unknown keys go to ``extra``, ``file_name`` is derived."""
        missing = [k for k in REQUIRED if obj.get(k) is None]
        if missing:
            raise InputError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
        known = {k: v for k, v in obj.items() if k in _FIELDS}
        extra = {k: v for k, v in obj.items() if k not in _FIELDS and k != "file_name"}
        try:
            known["sample"] = int(known["sample"])
        except (TypeError, ValueError):
            raise InputError(f"{where}: 'sample' is not an integer") from None
        known["target_id"], known["image"] = str(known["target_id"]), str(known["image"])
        for key in ("target", "settings"):
            if not isinstance(known.get(key, {}), Mapping):
                known[key] = {}
        return cls(**known, extra={**dict(obj.get("extra") or {}), **extra})

    @classmethod
    def from_json(cls, line: str, where: str = "record") -> SampleRecord:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where} is not JSON ({err.msg})") from err
        if not isinstance(obj, dict):
            raise InputError(f"{where} is not a JSON object")
        return cls.from_dict(obj, where)


_FIELDS = {f.name for f in dataclasses.fields(SampleRecord)} - {"extra"}
#: optional fields written only when set (all fields after ``settings``): quality, walk and map keys
_WRITTEN_WHEN_SET = {f.name for f in dataclasses.fields(SampleRecord)[
    [f.name for f in dataclasses.fields(SampleRecord)].index("naturalness"):]} - {"extra"}


class Manifest:
    """``OUT/manifest.jsonl``: the records in file order, with appends that reach the disk at once."""

    def __init__(self, path: str | Path, records: Iterable[SampleRecord] = ()):
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / MANIFEST  # a file, or the folder holding it
        self.records: list[SampleRecord] = list(records)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest file (or the one in a folder); a bad line raises InputError naming the line."""
        m = cls(path)
        try:
            lines = m.path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise InputError(f"{m.path}: cannot read ({err.strerror or err})") from err
        m.records = [SampleRecord.from_json(line, f"{m.path}: line {n}")
                     for n, line in enumerate(lines, 1) if line.strip()]
        return m

    def append(self, records: Iterable[SampleRecord]) -> None:
        """Add records to the file (created if needed) and flush, so an interrupted run keeps them."""
        records = list(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for r in records:
                fh.write(r.to_json() + "\n")
            fh.flush()
        self.records += records

    def __iter__(self) -> Iterator[SampleRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def cells(self) -> dict[tuple[str, int], SampleRecord]:
        """(target_id, sample) -> record; a repeated cell (a resumed run) keeps its last record."""
        return by_cell(self.records)

    def by_target(self) -> dict[str, list[SampleRecord]]:
        """target_id -> its records sorted by sample (targets in order of first appearance)."""
        return by_target(self.records)

    def by_image(self) -> dict[str, SampleRecord]:
        return {r.image: r for r in self.records}


def by_cell(records: Iterable[SampleRecord]) -> dict[tuple[str, int], SampleRecord]:
    """(target_id, sample) -> record, the last one winning."""
    return {r.cell: r for r in records}


def by_target(records: Iterable[SampleRecord]) -> dict[str, list[SampleRecord]]:
    """Records grouped by target (first-appearance order), one per sample (the last), sorted by sample."""
    groups: dict[str, dict[int, SampleRecord]] = {}
    for r in records:
        groups.setdefault(r.target_id, {})[r.sample] = r
    return {tid: [cells[s] for s in sorted(cells)] for tid, cells in groups.items()}


def write_metadata(out: str | Path, records: Iterable[SampleRecord]) -> Path:
    """``OUT/images/metadata.jsonl`` for ``datasets``' imagefolder: one line per image in ``images/``.

    ``file_name`` is relative to ``images/`` (the imagefolder rule); only scalar fields are written so
    every column has one type. Rewritten whole each time, so it always matches the manifest.
    """
    out = Path(out)
    path = out / "images" / METADATA
    lines = []
    for r in by_cell(records).values():
        rel = Path(r.image)
        if rel.parts[:1] != ("images",):
            continue
        row = {k: v for k, v in r.to_dict().items() if not isinstance(v, (dict, list))}
        row["file_name"] = str(Path(*rel.parts[1:]))
        lines.append(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path
