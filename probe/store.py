"""The HDF5 feature store: one group per (model, layer), rows aligned with paths and hashes.

Schema (README documents it)::

    /<model key>/<layer>/            group; model key = spec with ':' and '/' replaced by '_'
        features   float32|float16 [N, D]   chunked, compressed, resizable along N
        paths      str [N]                   source path (or "text:<prompt>" for text features)
        sha256     S64 [N]                   content hash of the source: the resume key
        labels     int64 [N]                 optional; -1 = unknown
        input_index int64 [N]                only in shard stores (STORE.shards/*.h5): the row's position in
                                             the run's input list, the order ``probe merge`` restores
        attrs: model_spec, weights, layer, preprocess (JSON), keep_spatial, token_pool, feature_shape,
               kind (image|text|decoded), probe_version, torch_version, created, updated
    /<model key>/<layer>/artifacts/<key>/   cached analyses (PCA, fitted maps) with their own attrs

Writing never touches the store file in place, and HDF5 never writes to disk at all. A writer (mode
"a") takes ``F.h5.writer.lock`` (another writer is refused: "locked by another probe process (pid N)"),
loads the store into memory, lets HDF5 write there, and commits by writing the memory image to
``F.h5.commit`` and renaming it over ``F.h5`` (atomic): after a flush, when the copy is cheap next to
the work done since the last commit, and on close. So a kill at any moment leaves ``F.h5`` as it was
at its last commit, and an I/O error (disk full, read-only, quota) is an ordinary Python error in
probe's own write -- never a half-written HDF5 file (HDF5 does not survive a failed write; it can
crash the process). Each append is all-or-nothing (a failure rolls the datasets back), so no row is
ever committed half-written. The store knows
nothing about torch models: callers pass plain arrays and a ``record`` dict describing how the
features were made.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from probe.errors import InputError, UsageError

STR = h5py.string_dtype("utf-8")
RECORD_KEYS = ("model_spec", "weights", "preprocess", "keep_spatial", "token_pool")  # + weights_sha256


def weights_mismatch(stored: dict, record: dict) -> str | None:
    """Why features made with ``record`` do not belong with ``stored`` ones, or None when they do.

    Weights are identified by their file's content (``weights_sha256``), not its path: a checkpoint
    overwritten at the same path is another network, the same file moved elsewhere is not. Where
    either side has no hash (older stores, hub weights, ``random``) the weights strings are compared.
    """
    if "weights" not in record and "weights_sha256" not in record:
        return None
    old_w, new_w = stored.get("weights") or "", record.get("weights") or ""
    old_h, new_h = stored.get("weights_sha256") or "", record.get("weights_sha256") or ""
    if (old_h == new_h) if (old_h and new_h) else (old_w == new_w):
        return None

    def show(w: str, h: str) -> str:
        return f"{w!r}" + (f" (sha256 {h[:12]})" if h else "")
    return f"weights={show(old_w, old_h)}, not {show(new_w, new_h)}"


#: what features are stored as (``--float16`` halves the file)
STORE_DTYPES = ("float32", "float16")


def check_dtype(dtype: object) -> str:
    """A store dtype, or UsageError (``extract(dtype="int8")`` would store zeros)."""
    if str(dtype) not in STORE_DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(STORE_DTYPES)}, not {dtype!r}")
    return str(dtype)


def stored_name(path: object) -> str:
    """A path as stored: bytes that are not UTF-8 and line breaks written as ``\\xNN`` escapes, so every
    name is valid text and one line of ``.paths.txt`` (``probe.images.fs_path`` reads the file back)."""
    from probe.images import path_text

    return path_text(str(path))


#: what makes two groups' rows one matrix: the record plus the layer, the kind and the weights' content hash
MERGE_KEYS = (*RECORD_KEYS, "layer", "kind")


def record_mismatch(a: dict, b: dict) -> str | None:
    """Why rows of groups with attributes ``a`` and ``b`` must not be joined (a merge of shards), or None."""
    for key in MERGE_KEYS:
        if _unattr(_attr(a.get(key))) != _unattr(_attr(b.get(key))):
            return f"{key} {a.get(key)!r} vs {b.get(key)!r}"
    if a.get("weights_sha256") or b.get("weights_sha256"):
        if (a.get("weights_sha256") or "") != (b.get("weights_sha256") or ""):
            return f"weights_sha256 {str(a.get('weights_sha256'))[:12]} vs {str(b.get('weights_sha256'))[:12]}"
    return None


def group_key(model_spec: str, layer: str) -> str:
    return f"{model_spec.replace(':', '_').replace('/', '_')}/{layer}"


def _attr(value: object) -> object:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def _unattr(value: object) -> object:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_group(path: Path, name: str, g: h5py.Group) -> None:
    """A group probe can read: 2-D features and row-aligned paths and hashes (InputError, exit 3, if not)."""
    problem = None
    feats = g.get("features")
    if not isinstance(feats, h5py.Dataset) or feats.ndim != 2:
        problem = "features is not a 2-D dataset"
    else:
        for key in ("paths", "sha256"):
            ds = g.get(key)
            if not isinstance(ds, h5py.Dataset):
                problem = f"no {key} dataset"
                break
            if ds.shape[:1] != feats.shape[:1]:
                problem = f"{key} has {ds.shape[0] if ds.ndim else 0} rows but features {feats.shape[0]}"
                break
    if problem:
        raise InputError(f"{path}: group {name} is not a probe feature group ({problem})")


class StoreGroup:
    """Row-aligned datasets of one (model, layer)."""

    def __init__(self, name: str, h5: h5py.Group, path: Path, store: FeatureStore | None = None):
        self.name = name
        self._g = h5
        self._path = path
        self._store = store

    def __len__(self) -> int:
        return self._g["features"].shape[0]

    @property
    def features(self) -> h5py.Dataset:
        return self._g["features"]

    @property
    def dim(self) -> int:
        return self._g["features"].shape[1]

    @property
    def attrs(self) -> dict:
        return {k: _unattr(v) for k, v in self._g.attrs.items()}

    @property
    def paths(self) -> list[str]:
        return [p.decode() if isinstance(p, bytes) else p for p in self._g["paths"][:]]

    @property
    def hashes(self) -> list[str]:
        return [h.decode() for h in self._g["sha256"][:]]

    @property
    def labels(self) -> np.ndarray | None:
        if "labels" not in self._g:
            return None
        labels = self._g["labels"][:]
        return labels if (labels >= 0).any() else None

    @property
    def input_index(self) -> np.ndarray | None:
        return self._g["input_index"][:] if "input_index" in self._g else None

    @property
    def raw_labels(self) -> np.ndarray:
        """Every row's label as stored (-1: none), unlike :attr:`labels`, which is None when no row has one."""
        return self._g["labels"][:]

    def set_attr(self, key: str, value: object) -> None:
        """Set one attribute of the group (JSON text for lists and dicts, as the store writes them)."""
        self._g.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value

    def keep_rows(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (indices, in order) of every row-aligned dataset; the others are dropped."""
        keep = np.asarray(keep)
        for name in ("features", "paths", "sha256", "labels", "input_index"):
            if name in self._g:
                values = self._g[name][:][keep]
                self._g[name].resize(len(keep), axis=0)
                self._g[name][:] = values

    def rows(self, indices: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        n = len(self)
        if isinstance(indices, slice):
            return self.features[indices].astype(np.float32)
        idx = np.asarray(indices, dtype=np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise UsageError(f"{self._path}: index {int(bad[0])} is out of range for group {self.name} "
                             f"with {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        order = np.argsort(idx)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        if len(idx):
            uniq, inv = np.unique(idx[order], return_inverse=True)
            out[order] = self.features[uniq][inv]
        return out

    def index_of_path(self, path: str) -> int:
        from probe.images import path_text

        paths = self.paths
        path = path_text(path)
        for candidate in (path, path_text(Path(path).resolve())):
            if candidate in paths:
                return paths.index(candidate)
        names = [i for i, p in enumerate(paths) if Path(p).name == Path(path).name]
        if len(names) == 1:
            return names[0]
        raise UsageError(f"{self._path}: no row with path {path!r} in group {self.name}")

    def append(self, features: np.ndarray, paths: Sequence[str], hashes: Sequence[str],
               labels: Sequence[int] | None = None, input_index: Sequence[int] | None = None) -> None:
        n, d = features.shape
        if d != self.dim:
            raise UsageError(f"{self._path}: features of dimension {d} do not fit group {self.name} ({self.dim})")
        if not (len(paths) == len(hashes) == n):
            raise ValueError("features, paths and hashes must have the same number of rows")
        start = len(self)
        if "input_index" in self._g and input_index is None:
            raise ValueError(f"{self._path}: a shard store needs each row's input_index")
        present = [name for name in ("features", "paths", "sha256", "labels", "input_index") if name in self._g]
        try:
            for name in present:
                self._g[name].resize(start + n, axis=0)
            with np.errstate(over="ignore"):  # an overflow is reported below, as one line
                stored = features.astype(self._g["features"].dtype)
            if stored.dtype == np.float16 and np.isfinite(features).all() and not np.isfinite(stored).all():
                import warnings

                from probe.errors import ProbeWarning

                bad = int((~np.isfinite(stored)).any(axis=1).sum())
                warnings.warn(f"{self._path}: {bad} row(s) of group {self.name} exceed float16's range (65504) "
                              "and are stored as inf; extract without --float16 to keep them", ProbeWarning,
                              stacklevel=2)
            self._g["features"][start:] = stored
            self._g["paths"][start:] = [stored_name(p) for p in paths]
            self._g["sha256"][start:] = [h.encode() for h in hashes]
            if "labels" in self._g:
                self._g["labels"][start:] = -1 if labels is None else np.asarray(labels, dtype=np.int64)
            if "input_index" in self._g:
                self._g["input_index"][start:] = np.asarray(input_index, dtype=np.int64)
            self._g.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        except BaseException:
            # all or nothing: a row is never left with an empty path or hash
            try:
                for name in present:
                    self._g[name].resize(start, axis=0)
            except Exception:  # noqa: BLE001 - the file is broken: its writer must not commit it
                if self._store is not None:
                    self._store._broken = True
            raise


def _io_reason(exc: BaseException) -> str:
    """The OS's words for an I/O error, also when HDF5 wraps them in its own long message."""
    text = str(exc)
    m = re.search(r"error message = '([^']+)'", text)
    if m:
        return m.group(1)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text.split("(")[0].strip() or type(exc).__name__


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


class FeatureStore:
    """An HDF5 file of feature groups. Use as a context manager; ``mode`` is "r" or "a".

    Mode "a" locks the file, works in memory and commits atomically (module docstring): a reader never
    sees a half-written file, a failed or killed writer leaves the last commit intact. A writer holds
    the whole store in memory. ``commit_factor``: after a flush, commit when the time since the last
    commit is at least this many times what the last commit's write took (0: on every flush).
    """

    SPACE_MARGIN = 1 << 20
    commit_factor = 10.0

    def __init__(self, path: str | Path, mode: str = "r", commit_factor: float | None = None):
        self.path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.mode = mode
        if commit_factor is not None:
            self.commit_factor = commit_factor
        self._broken = False
        self._dirty = False
        self._lock = None
        self._buf: io.BytesIO | None = None
        if mode == "r":
            if not self.path.is_file():
                raise InputError(f"{self.path}: feature store not found"
                                 + (" (it is a directory)" if self.path.is_dir() else ""))
            self._h5 = self._open(self.path, "r")
            return
        self._open_for_writing()

    def _open(self, file: Path | io.BytesIO, mode: str) -> h5py.File:
        from probe.containment import check_hdf5

        try:
            h5 = h5py.File(file, mode)
        except OSError as exc:
            reason = str(exc).split("(")[0].strip() or type(exc).__name__
            raise InputError(f"{self.path}: not a readable HDF5 feature store ({reason})") from exc
        try:
            check_hdf5(h5, self.path)  # no external links, virtual or external data, no size bombs
        except BaseException:
            h5.close()
            raise
        return h5

    def _open_for_writing(self) -> None:
        from probe.containment import check_output_file
        from probe.locking import ProbeLock

        if self.path.is_dir():
            raise UsageError(f"{self.path}: is a directory; name a feature store file (.h5)")
        check_output_file(self.path, "the feature store")
        self.path = self.path.resolve()  # a symlinked store is updated where it really lives
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # its own lock file, so a caller that also holds ProbeLock(store) (probe merge) does not lock itself out
            self._lock = ProbeLock(self.path, lock_file=self.path.with_name(self.path.name + ".writer.lock")).acquire()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write here ({_io_reason(exc)})") from exc
        try:
            self._tmp.unlink(missing_ok=True)  # a commit cut short by a kill: the store itself is whole
            if self.path.exists():
                data = self.path.read_bytes()
                self._buf = io.BytesIO(data)
                self._h5 = self._open(self._buf, "r+")
            else:
                self._buf = io.BytesIO()
                self._h5 = h5py.File(self._buf, "w")
                self._dirty = True
        except BaseException as exc:
            self._lock.release()
            if isinstance(exc, OSError):
                raise InputError(f"{self.path}: cannot read or write here ({_io_reason(exc)})") from exc
            raise
        self._last_commit = time.monotonic()
        self._commit_seconds = 0.0

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".commit")

    def ensure_space(self, nbytes: int) -> None:
        """Refuse a commit that the disk has no room for (InputError, exit 3), with the numbers."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < nbytes + self.SPACE_MARGIN:
            raise InputError(f"{self.path}: disk full ({free:,} bytes free, {nbytes + self.SPACE_MARGIN:,} needed: "
                             f"{nbytes:,} for the store and a {self.SPACE_MARGIN >> 20} MiB margin); the store "
                             "keeps every row committed before; free space and rerun to resume")

    def _write_failed(self, exc: BaseException) -> InputError:
        return InputError(f"{self.path}: write failed ({_io_reason(exc)}); the store keeps every row committed "
                          "before; free space or fix permissions and rerun to resume")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close; a writer commits first (unless a write failed: then the last commit stays)."""
        if self.mode == "r":
            if self._h5.id.valid:
                self._h5.close()
            return
        if self._lock is None or not self._lock.held:
            return
        try:
            if self._dirty and not self._broken:
                self.commit()
        finally:
            try:
                if self._h5.id.valid:
                    self._h5.close()
            finally:
                self._lock.release()

    def flush(self) -> None:
        """End of a unit of work (a batch): commit it when that is cheap next to the work since the last."""
        if self.mode == "r":
            return
        self._dirty = True
        if time.monotonic() - self._last_commit >= self.commit_factor * self._commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Make everything written so far the store's content: the memory image, renamed over the file."""
        if self.mode == "r" or self._broken:
            return
        start = time.perf_counter()
        self._h5.flush()
        view = self._buf.getbuffer()
        try:
            self.ensure_space(len(view))
            with open(self._tmp, "wb") as fh:
                fh.write(view)
                fh.flush()
                os.fsync(fh.fileno())
            if self.path.exists():
                shutil.copymode(self.path, self._tmp)
            os.replace(self._tmp, self.path)
            _fsync(self.path.parent)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            self._broken = True  # no retry on close: the same write would fail the same way
            raise self._write_failed(exc) from exc
        except InputError:
            self._broken = True
            raise
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            view.release()  # the buffer must be free again before HDF5 grows it
        self._dirty = False
        self._commit_seconds = time.perf_counter() - start
        self._last_commit = time.monotonic()

    def group_names(self) -> list[str]:
        names: list[str] = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group) and "features" in obj and "/artifacts" not in f"/{name}":
                names.append(name)
        self._h5.visititems(visit)
        return sorted(names)

    def hashes_of(self, names: Iterable[str]) -> dict[str, set[str]]:
        """Hashes already stored per group, for resuming; empty sets for groups not there yet."""
        present = self.group_names()
        return {n: set(self.group(n).hashes) if n in present else set() for n in names}

    def __contains__(self, name: str) -> bool:
        return name in self.group_names()

    def group(self, name: str | None = None) -> StoreGroup:
        names = self.group_names()
        if name is None:
            if len(names) != 1:
                listing = ", ".join(names) or "none"
                raise UsageError(f"{self.path}: holds {len(names)} groups ({listing}); choose one with --group")
            name = names[0]
        if name not in names:
            listing = ", ".join(names) or "none"
            raise UsageError(f"{self.path}: no group {name!r}; groups: {listing}")
        _check_group(self.path, name, self._h5[name])
        return StoreGroup(name, self._h5[name], self.path, self)

    def create_group(self, name: str, dim: int, record: dict, layer: str, kind: str = "image",
                     dtype: str = "float32", feature_shape: Sequence[int] | None = None,
                     overwrite: bool = False, ordered: bool = False) -> StoreGroup:
        """Open ``name`` for appending, creating it if needed.

        An existing group made by another model (spec, weights, preprocessing or pooling) is refused:
        mixing features of two networks in one matrix silently corrupts every later analysis.
        ``ordered`` adds the ``input_index`` dataset of a shard store.
        """
        if name in self._h5 and overwrite:
            self._dirty = True
            del self._h5[name]
        if name in self._h5:
            grp = self.group(name)
            old = grp.attrs
            for key in RECORD_KEYS:
                if key != "weights" and key in record and _unattr(_attr(record[key])) != old.get(key):
                    raise UsageError(
                        f"{self.path}: group {name} was made with {key}={old.get(key)!r}, not "
                        f"{record[key]!r}; use another file, another group, or --overwrite")
            problem = weights_mismatch(old, record)
            if problem:
                raise UsageError(f"{self.path}: group {name} was made with {problem}; use another file, another "
                                 "group, or --overwrite")
            if grp.dim != dim:
                raise UsageError(f"{self.path}: group {name} has dimension {grp.dim}, not {dim}")
            return grp
        self._dirty = True
        g = self._h5.create_group(name)
        try:
            self._fill_new_group(g, dim, record, layer, kind, dtype, feature_shape)
            if ordered:
                g.create_dataset("input_index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(1024,))
        except BaseException:
            del self._h5[name]  # never leave a half-made group that a rerun would trust
            raise
        return StoreGroup(name, g, self.path, self)

    @staticmethod
    def _fill_new_group(g: h5py.Group, dim: int, record: dict, layer: str, kind: str, dtype: str,
                        feature_shape: Sequence[int] | None) -> None:
        import torch

        from probe import __version__

        itemsize = np.dtype(dtype).itemsize
        chunk_rows = int(max(1, min(1024, (1 << 20) // max(1, dim * itemsize))))
        g.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                         chunks=(chunk_rows, dim), compression="gzip", compression_opts=4, shuffle=True)
        g.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
        g.create_dataset("sha256", shape=(0,), maxshape=(None,), dtype="S64", chunks=(1024,))
        g.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(1024,))
        for key, value in record.items():
            g.attrs[key] = _attr(value)
        g.attrs.update({"layer": layer, "kind": kind, "feature_shape": _attr(list(feature_shape or [dim])),
                        "probe_version": __version__, "torch_version": str(torch.__version__),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def save_artifact(self, name: str, key: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        """Cache an analysis of group ``name`` (e.g. a fitted PCA) under ``artifacts/key``."""
        grp = self._h5[self.group(name).name]
        art = grp.require_group("artifacts")
        if key in art:
            del art[key]
        a = art.create_group(key)
        for k, v in arrays.items():
            a.create_dataset(k, data=v)
        for k, v in attrs.items():
            a.attrs[k] = _attr(v)
        a.attrs["n_rows"] = len(self.group(name))
        self.flush()

    def load_artifact(self, name: str, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """A cached analysis, or None when absent or made before rows were added to the group."""
        grp = self._h5[self.group(name).name]
        if "artifacts" not in grp or key not in grp["artifacts"]:
            return None
        a = grp["artifacts"][key]
        attrs = {k: _unattr(v) for k, v in a.attrs.items()}
        if attrs.get("n_rows") != len(self.group(name)):
            return None
        return {k: a[k][()] for k in a.keys()}, attrs

    def describe(self) -> dict:
        """Everything ``probe info`` shows, JSON-able."""
        out = {"file": str(self.path), "groups": []}
        for name in self.group_names():
            g = self.group(name)
            arts = sorted(self._h5[name]["artifacts"].keys()) if "artifacts" in self._h5[name] else []
            out["groups"].append({"name": name, "rows": len(g), "dim": g.dim, "dtype": str(g.features.dtype),
                                  "labelled": g.labels is not None, "artifacts": arts, "attrs": g.attrs})
        return out


def existing_hashes(store_path: Path, names: Iterable[str]) -> dict[str, set[str]]:
    """Hashes already stored per group, for resuming; empty sets for groups not there yet."""
    out = {n: set() for n in names}
    if not store_path.exists():
        return out
    with FeatureStore(store_path, "r") as st:
        present = st.group_names()
        for n in out:
            if n in present:
                out[n] = set(st.group(n).hashes)
    return out
