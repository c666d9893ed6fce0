"""The decode manifest: one typed record per decoded image, and the ``manifest.jsonl`` file that holds them.

Every decoding workflow (decode, interpolate, perturb, map --grid) writes ``OUT/manifest.jsonl``, one JSON
object per decoded sample; every reader (compare, the walk reports, map overlays, benchmarks) reads it
back through :class:`Manifest`, so a key is spelt in one place only.

Compatibility rules:
  * reading tolerates keys it does not know (a newer probe wrote them): they are kept in
    :attr:`SampleRecord.extra` and written back unchanged;
  * only ``target_id``, ``sample`` and ``image`` are required; every other field may be missing
    (a hand-written manifest, an older probe) and reads as ``None``;
  * per-sample quality fields (``naturalness``, ``off_manifold``), the walk fields (path position,
    direction and scale, map grid cell) and ``target_image`` are optional typed fields, written only when set;
  * a record read from a line writes that line back byte for byte (:attr:`SampleRecord.layout`), so a
    merge or a resume that rewrites the file never reformats what an older probe or a person wrote;
  * a last line with no newline that is not JSON is a write a kill cut short: dropped on reading.

``file_name`` (the image's path relative to the folder that holds the record) is written into every
line, and :func:`write_metadata` writes ``OUT/images/metadata.jsonl`` in the layout of Hugging Face
``datasets``' ``imagefolder`` (``file_name`` relative to ``images/``), so
``load_dataset("imagefolder", data_dir="OUT/images")`` reads the decoded images with their records.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.errors import InputError

MANIFEST = "manifest.jsonl"
METADATA = "metadata.jsonl"  # Hugging Face imagefolder's file name
REQUIRED = ("target_id", "sample", "image")


@dataclass(frozen=True, kw_only=True)
class SampleRecord:
    """One decoded sample: which target, which seed, where its images are, what distance it reached.

    Fields are keyword-only and declared in the order decode writes them, so a line's bytes do not
    depend on which probe version wrote it (the keys a walk adds come after the decode's own).
    """

    target_id: str
    target_index: int | None = None
    sample: int
    seed: int | None = None
    image: str  # best image, relative to the output folder
    final_image: str | None = None
    baseline_image: str | None = None
    best_distance: float | None = None
    final_distance: float | None = None
    baseline_distance: float | None = None
    relative_distance: float | None = None
    cosine: float | None = None
    # per-sample quality (issue 10, probe.naturalness): written only when measured
    naturalness: float | None = None
    off_manifold: bool | None = None
    # reach and domain checks (probe.reference): best distance over the target's nearest real reference
    # image's (> 1: not reached), and the target's k-NN cosine distance to the prior's data over the
    # in-domain spread (> 1: outside the prior's domain); written only when the prior has a reference set
    reach_ratio: float | None = None
    not_reached: bool | None = None
    domain_ratio: float | None = None
    out_of_domain: bool | None = None
    best_step: int | None = None
    best_timestep: int | None = None
    stopped_step: int | None = None
    # which of GuidanceConfig.candidates chains was kept (its noise: seed + candidate·CANDIDATE_SEED_OFFSET)
    candidate: int | None = None
    # the seed the kept chain's noise came from, when it is not seed + candidate·offset (a seed-pool pick)
    noise_seed: int | None = None
    # with a data start (GuidanceConfig.data_start): the index, in the prior's training data, of the image
    # the decode started from (its layout is that image's)
    start_image: int | None = None
    steps: int | None = None
    evaluations: int | None = None
    skipped_steps: int | None = None
    seconds: float | None = None
    batch_seconds: float | None = None
    trajectory_image: str | None = None
    target: Mapping[str, Any] = field(default_factory=dict)  # kind, source, index, label, image_path
    prior: str | None = None
    encoder: str | None = None
    layer: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    # which weights the encoder ran with ("" = the spec's default; sha256 of a local file, else ""):
    # compare's circularity check
    encoder_weights: str | None = None
    encoder_weights_sha256: str | None = None
    # interpolate
    path_position: float | None = None
    path_kind: str | None = None
    path_index: int | None = None
    # perturb
    direction: str | None = None
    direction_index: int | None = None
    scale: float | None = None
    scale_index: int | None = None
    direction_info: Mapping[str, Any] | None = None
    base: Mapping[str, Any] | None = None
    explained_variance_ratio: float | None = None
    # map --grid
    grid_row: int | None = None
    grid_col: int | None = None
    map_x: float | None = None
    map_y: float | None = None
    map_method: str | None = None
    # the target's picture copied into OUT/targets/ (relative to OUT), when it has one
    target_image: str | None = None
    # keys this version does not know, kept so a rewrite loses nothing
    extra: Mapping[str, Any] = field(default_factory=dict)
    # the keys of the line this record was read from, in order: a rewrite gives that line back byte for
    # byte (an older or hand-written manifest is not reformatted by a merge or a resume)
    layout: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def file_name(self) -> str:
        """The best image relative to the output folder (Hugging Face's ``file_name`` column)."""
        return self.image

    @property
    def label(self) -> Any:
        """The target's label (class name, prompt …) or None."""
        return self.target.get("label") if self.target else None

    @property
    def flagged(self) -> bool | None:
        """Whether a decode check says this sample is no evidence about its feature: off the prior's manifold
        (realism), not reached (probe.reference) or decoded from a target outside the prior's domain.
        None when no check was recorded (an older manifest)."""
        flags = [f for f in (self.off_manifold, self.not_reached, self.out_of_domain) if isinstance(f, bool)]
        return any(flags) if flags else None

    @property
    def flag_reasons(self) -> list[str]:
        return [name for name in ("off_manifold", "not_reached", "out_of_domain") if getattr(self, name) is True]

    @property
    def cell(self) -> tuple[str, int]:
        return self.target_id, self.sample

    def replace(self, **changes: Any) -> SampleRecord:
        return dataclasses.replace(self, **changes)

    def with_keys(self, keys: Mapping[str, Any]) -> SampleRecord:
        """This record with fields set by their JSON key (a target's walk keys, a caller's extra keys);
        a key this version has no field for goes to :attr:`extra`."""
        known, unknown = _split(keys)
        return dataclasses.replace(self, **known, extra={**self.extra, **unknown})

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one manifest line: decode fields always, optional ones when set, then
        ``file_name`` and the unknown keys. A record read from a line gives that line's keys in its
        order (plus any field set since), so rewriting a manifest never reformats it."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if name in _WRITTEN_WHEN_SET and value is None:
                continue
            out[name] = dict(value) if isinstance(value, Mapping) else value
        out["file_name"] = self.file_name
        out.update(self.extra)
        if not self.layout:
            return out
        kept = {k: out.get(k) for k in self.layout if k in out or k in _FIELDS}
        added = {k: v for k, v in out.items()
                 if k not in kept and (k in self.extra or (k in _FIELDS and v != _FIELDS[k]))}
        return {**kept, **added}

    def to_json(self) -> str:
        """One line of strict JSON: a NaN or infinite number (a distance that diverged) is written as null."""
        return json.dumps(json_safe(self.to_dict()), allow_nan=False)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "record") -> SampleRecord:
        """Build a record from a JSON object; unknown keys go to ``extra``, ``file_name`` is derived,
        the key order is kept (:attr:`layout`)."""
        missing = [k for k in REQUIRED if obj.get(k) is None]
        if missing:
            raise InputError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
        known, extra = _split(obj)
        try:
            known["sample"] = int(known["sample"])
        except (TypeError, ValueError):
            raise InputError(f"{where}: 'sample' is not an integer") from None
        known["target_id"], known["image"] = str(known["target_id"]), str(known["image"])
        for key in ("target", "settings"):
            if not isinstance(known.get(key, {}), Mapping):
                known[key] = {}
        return cls(**known, extra={**dict(obj.get("extra") or {}), **extra}, layout=tuple(obj))

    @classmethod
    def from_json(cls, line: str | bytes, where: str = "record") -> SampleRecord:
        try:
            obj = json.loads(line)
        except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
            raise InputError(f"{where} is not JSON ({getattr(err, 'msg', None) or err})") from err
        if not isinstance(obj, dict):
            raise InputError(f"{where} is not a JSON object")
        return cls.from_dict(obj, where)


#: the fields written to JSON, in declaration order, with their defaults (``extra`` is spread into the
#: line, ``layout`` is not written)
_FIELDS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
           for f in dataclasses.fields(SampleRecord) if f.name not in ("extra", "layout")}
#: optional fields written only when set: quality, walk and map keys, the target's copied picture
_WRITTEN_WHEN_SET = frozenset({
    "naturalness", "off_manifold", "reach_ratio", "not_reached", "domain_ratio", "out_of_domain", "path_position",
    "path_kind", "path_index", "direction", "direction_index",
    "scale", "scale_index", "direction_info", "base", "explained_variance_ratio", "grid_row", "grid_col",
    "map_x", "map_y", "map_method", "target_image", "candidate", "noise_seed", "start_image"})


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so the line stays JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _split(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keys that are fields, keys this version does not know); ``file_name`` is derived, never kept, and
    ``extra`` (a dict of a record made by :func:`dataclasses.asdict`) is the caller's to spread."""
    known = {k: v for k, v in obj.items() if k in _FIELDS}
    unknown = {k: v for k, v in obj.items() if k not in _FIELDS and k not in ("file_name", "extra")}
    return known, unknown


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
    def read(cls, path: str | Path, repair: bool = False, missing_ok: bool = False) -> Manifest:
        """Read a manifest file (or the one in a folder); a bad line raises InputError naming the line.

        A last line with no newline that is not JSON is a write a kill cut short: it is dropped (and cut
        from the file with ``repair``, so the next append starts on a line of its own). ``missing_ok``:
        no file reads as no records (a run not started yet).
        """
        m = cls(path)
        if missing_ok and not m.path.is_file():
            return m
        try:
            raw = m.path.read_bytes()
        except OSError as err:
            raise InputError(f"{m.path}: cannot read ({err.strerror or err})") from err
        lines = raw.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if n == len(lines) and not _is_json(line):
                if repair:
                    with open(m.path, "r+b") as fh:
                        fh.truncate(len(raw) - len(line))
                break
            m.records.append(SampleRecord.from_json(line, f"{m.path}: line {n}"))
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

    def write(self, records: Iterable[SampleRecord]) -> None:
        """Replace the file with ``records``: written beside it and renamed into place, so a kill leaves
        either the old or the new manifest (merges and resumes rewrite it in the single-process order)."""
        self.records = list(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".merging")
        tmp.write_text("".join(r.to_json() + "\n" for r in self.records), encoding="utf-8")
        tmp.replace(self.path)

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


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


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
        lines.append(json.dumps(json_safe(row), allow_nan=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path
