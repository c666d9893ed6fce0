"""Image sets at scale as ``probe extract`` inputs: webdataset tar shards and parquet image columns.

Each image inside a container becomes one input item whose recorded path is ``CONTAINER::KEY``
(``shards/00003.tar::000031234.jpg``, ``part-0.parquet::000031234``); its sha256 is the hash of the
image's bytes, so resuming works exactly as for files. Nothing is unpacked to disk:

* tar (webdataset / img2dataset layout: ``key.jpg|png|…`` beside ``key.json|txt|cls``): a ``key.cls``
  member (integer text) or a ``key.json`` with a ``label`` or ``cls`` field gives the sample's label; the
  other members are ignored. The member headers are scanned once in file order, then each image is read by its byte
  offset, so DataLoader workers and shards read only their own members. Compressed tars (.tar.gz) cannot
  be read by offset and are refused: unpack them, or write plain .tar as img2dataset does by default.
* parquet (img2dataset ``--output_format parquet``, Hugging Face image columns): read one row group
  at a time (cached per reader process) with pyarrow; the key is the ``key`` column when there is one,
  else the row number in the file; the ``label`` column (or ``--label-column NAME``) gives the labels.

A label is an integer in [0, MAX_LABEL]; anything else is a warning and label -1 (unknown), never a failure.

Brace patterns (``shards/{00000..00009}.tar``, ``{a,b}.tar``) expand as in bash, in order.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from probe.errors import InputError, UsageError
from probe.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, collect_inputs, path_text, read_image01

TAR_SUFFIXES = (".tar",)
PARQUET_SUFFIXES = (".parquet",)
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img")


@dataclass(frozen=True)
class TarMember:
    """One image inside an uncompressed tar, read by byte offset (picklable for DataLoader workers)."""

    container: str
    member: str
    offset: int
    size: int
    label: int = -1  # from key.cls / key.json (-1: none)
    label_problem: str = ""  # why a label present could not be used (stored as -1 with a warning)

    @property
    def key(self) -> str:
        return f"{self.container}::{self.member}"

    def read(self) -> bytes:
        with open(self.container, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise OSError(f"truncated tar member ({len(data)} of {self.size} bytes)")
        return data


_ROW_GROUP_CACHE: dict[tuple[str, int, str], list] = {}


@dataclass(frozen=True)
class ParquetRow:
    """One image cell of a parquet file: (row group, row within it, column)."""

    container: str
    row_group: int
    row: int
    column: str
    name: str
    label: int = -1  # from the label column (-1: none)
    label_problem: str = ""

    @property
    def key(self) -> str:
        return f"{self.container}::{self.name}"

    def read(self) -> bytes:
        cache_key = (self.container, self.row_group, self.column)
        if cache_key not in _ROW_GROUP_CACHE:
            pq = _pyarrow_parquet()
            _ROW_GROUP_CACHE.clear()  # one row group per reader process: memory stays bounded
            col = pq.ParquetFile(self.container).read_row_group(self.row_group, columns=[self.column]).column(0)
            _ROW_GROUP_CACHE[cache_key] = col.to_pylist()
        value = _ROW_GROUP_CACHE[cache_key][self.row]
        if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes")
        if not value:
            raise OSError("empty image cell")
        return bytes(value)


SourceItem = TarMember | ParquetRow
Item = Path | TarMember | ParquetRow


def item_key(item: Item) -> str:
    """The path recorded in the store for ``item`` (file names as storable text, see ``path_text``)."""
    return path_text(item) if isinstance(item, Path) else item.key


def read_item(item: Item) -> tuple[bytes | None, str]:
    """(bytes or None for plain files, sha256); OSError when the bytes cannot be read."""
    if isinstance(item, Path):
        from probe.images import sha256_file

        return None, sha256_file(item)
    data = item.read()
    return data, hashlib.sha256(data).hexdigest()


def decode_item(item: Item, data: bytes | None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """[C, H, W] in [0, 1]; InputError naming the item when it is not a readable image."""
    if data is None:
        return read_image01(item, max_pixels)
    buffer = io.BytesIO(data)
    buffer.name = item_key(item)  # what the reader's error lines name
    return read_image01(buffer, max_pixels)


def quiet_worker(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a loader worker ignores Ctrl-C, which the terminal sends to the whole
    process group; the main process alone stops (exit 130, one line), so no worker prints a traceback.
    Nor does the worker's fd-sharing thread when the stopped main process resets its connection."""
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gone = (ConnectionError, EOFError)  # the main process went away
    thread_hook, sys_hook = threading.excepthook, sys.excepthook

    def quiet_thread(args) -> None:
        if not issubclass(args.exc_type, gone):
            thread_hook(args)

    def quiet_sys(exc_type, value, tb) -> None:  # multiprocessing's resource sharer reports through this
        if not issubclass(exc_type, gone):
            sys_hook(exc_type, value, tb)
    threading.excepthook, sys.excepthook = quiet_thread, quiet_sys


# -- expanding inputs -------------------------------------------------------------------------------------
#: a brace pattern may name at most this many inputs (``{0..999}{0..999}{0..999}`` is 10^9: refused, exit 2)
MAX_BRACE_NAMES = 1_000_000


def _brace_options(body: str) -> tuple[int, list[str] | None]:
    """(how many options a brace body has, the options when it is a plain list); 0 when not a pattern."""
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        return abs(int(rng.group(2)) - int(rng.group(1))) + 1, None
    return (len(body.split(",")), body.split(",")) if "," in body else (0, None)


def brace_count(pattern: str) -> int:
    """How many names ``expand_braces(pattern)`` gives, counted without making them."""
    count, rest = 1, pattern
    while (m := re.search(r"\{([^{}]*)\}", rest)):
        n, _ = _brace_options(m.group(1))
        count *= max(n, 1)
        rest = rest[m.end():]
    return count


def expand_braces(pattern: str) -> list[str]:
    """bash-style ``{0000..0009}`` (zero padding kept) and ``{a,b}``, left to right, nested allowed;
    a pattern of more than MAX_BRACE_NAMES names is refused (UsageError) before any is made."""
    n = brace_count(pattern)
    if n > MAX_BRACE_NAMES:
        raise UsageError(f"{pattern}: brace pattern expands to {n:,} names (more than {MAX_BRACE_NAMES:,}); "
                         "split the input or use --list")
    return _expand_braces(pattern)


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.lstrip("-").startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        options = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in _expand_braces(tail)]
    return [head + o + t for o in options for t in _expand_braces(tail)]


#: labels are class indices: 0 .. MAX_LABEL (int32's range, what any classifier uses)
MAX_LABEL = 2**31 - 1
#: a .cls or .json member larger than this is not read for a label (a warning, label -1)
MAX_LABEL_MEMBER_BYTES = 1 << 16
LABEL_FIELDS = ("label", "cls")


def parse_label(value: object) -> tuple[int, str]:
    """(label, "") for an integer (or integer text) in [0, MAX_LABEL]; (-1, why) for anything else."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d{1,20}", text):
            return -1, f"label {text[:40]!r} is not an integer"
        value = int(text)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return -1, f"label {str(value)[:40]!r} is not an integer"
    if not 0 <= value <= MAX_LABEL:
        return -1, f"label {value} is outside 0..{MAX_LABEL}"
    return value, ""


def _sample_key(member: str) -> str:
    """webdataset's sample key: the member path up to the first dot of its file name."""
    head, _, base = member.rpartition("/")
    return f"{head}/{base.split('.', 1)[0]}" if head else base.split(".", 1)[0]


def _member_label(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, str]:
    """The label a ``.cls`` or ``.json`` member gives: (label, "") / (-1, why) / (-1, "") for none."""
    import json

    if member.size > MAX_LABEL_MEMBER_BYTES:
        return -1, f"{Path(member.name).name} is {member.size:,} bytes; labels are read from at most " \
                   f"{MAX_LABEL_MEMBER_BYTES:,}"
    fh = tar.extractfile(member)
    data = fh.read() if fh is not None else b""
    if member.name.lower().endswith(".cls"):
        return parse_label(data)
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return -1, f"{Path(member.name).name} is not JSON"
    if not isinstance(meta, dict):
        return -1, ""
    field = next((f for f in LABEL_FIELDS if f in meta), None)
    return parse_label(meta[field]) if field else (-1, "")


def tar_members(path: Path) -> list[TarMember]:
    """The image members of an uncompressed tar, in file order, with their samples' labels."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        raise UsageError(f"{path}: compressed tar cannot be streamed by offset; unpack it or use a plain .tar")
    try:
        with tarfile.open(path, "r:") as tar:
            images, labels = [], {}
            for m in tar:
                if not m.isfile():
                    continue
                suffix = Path(m.name).suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    images.append(m)
                elif suffix in (".cls", ".json"):
                    key = _sample_key(m.name)
                    label = _member_label(tar, m)
                    if suffix == ".cls" or key not in labels or labels[key] == (-1, ""):  # .cls wins
                        labels[key] = label
            return [TarMember(str(path), m.name, m.offset_data, m.size,
                              *labels.get(_sample_key(m.name), (-1, ""))) for m in images]
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{path}: not a readable tar file ({exc})") from exc


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError("reading parquet needs pyarrow: pip install pyarrow") from exc
    return pq


def parquet_rows(path: Path, column: str | None = None, label_column: str | None = None) -> list[ParquetRow]:
    """Every row of ``path``'s image column (``column``, or the first of jpg/png/image/… present), with its
    label from ``label_column`` (default: the ``label`` column when there is one)."""
    pq = _pyarrow_parquet()
    try:
        f = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
    names = f.schema_arrow.names
    if column is None:
        column = next((c for c in IMAGE_COLUMNS if c in names), None)
        if column is None:
            raise UsageError(f"{path}: no image column ({', '.join(IMAGE_COLUMNS)}); name it with --image-column "
                             f"(columns: {', '.join(names)})")
    elif column not in names:
        raise UsageError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    declared, size = f.metadata.num_rows, path.stat().st_size
    if declared > size:  # every row holds an image: a row per byte is already impossible
        raise InputError(f"{path}: declares {declared:,} rows in {size:,} bytes; damaged or hostile")
    if label_column is not None and label_column not in names:
        raise UsageError(f"{path}: no label column {label_column!r} (columns: {', '.join(names)})")
    label_column = label_column or ("label" if "label" in names else None)
    keys = f.read(columns=["key"]).column(0).to_pylist() if "key" in names else None
    labels = f.read(columns=[label_column]).column(0).to_pylist() if label_column else None
    out, start = [], 0
    for rg in range(f.num_row_groups):
        n = f.metadata.row_group(rg).num_rows
        for r in range(n):
            name = str(keys[start + r]) if keys is not None else f"{start + r:09d}"
            label = parse_label(labels[start + r]) if labels is not None and labels[start + r] is not None \
                else (-1, "")
            out.append(ParquetRow(str(path), rg, r, column, name, *label))
        start += n
    return out


def is_container(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TAR_SUFFIXES + PARQUET_SUFFIXES + (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def collect_sources(items: Iterable[str], list_file: str | None = None,
                    image_column: str | None = None, label_column: str | None = None) -> list[Item]:
    """``collect_inputs`` plus brace patterns and containers: each tar/parquet becomes its images, in order
    (with their labels: ``.cls``/``.json`` tar members, the parquet ``label`` column or ``label_column``)."""
    entries = [e for item in items for e in expand_braces(item)]
    out: list[Item] = []
    for p in collect_inputs(entries, list_file):
        name = p.name.lower()
        if name.endswith(PARQUET_SUFFIXES):
            out += parquet_rows(p, image_column, label_column)
        elif is_container(p):
            out += tar_members(p)
        else:
            out.append(p)
    return out
