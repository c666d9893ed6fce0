"""Containment: nothing outside a run folder or store is read, written, moved or followed.

One place for every rule that keeps probe's file access where the user put it (docs/security.md lists
them):

* :func:`inside` -- a path named by data (a manifest's ``image``, a shard's file) resolved against its
  folder, symlinks included; one that leaves the folder is refused (InputError, exit 3).
* :func:`open_lock` -- a lock file opened without following a symlink (``O_NOFOLLOW``) and only when it
  is a regular file, so a planted link never gets its target overwritten.
* :func:`check_output_file` -- an output (``-o``) is a regular file or absent: a device node, a FIFO or a
  socket is refused (UsageError, exit 2), never replaced or hung on.
* :func:`check_hdf5` -- an HDF5 file holds only its own data: external links, virtual datasets and external
  raw storage are refused, and so is a dataset whose declared size is out of all proportion to the bytes
  it holds (a tiny file declaring 4·10⁸ rows would make a reader allocate gigabytes).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from probe.errors import InputError, UsageError

#: a dataset may declare more than this many bytes only when its file holds at least 1/MAX_RATIO of them
MAX_DECLARED_BYTES = 256 << 20
MAX_RATIO = 1000


def inside(root: str | Path, rel: str | Path, what: str = "file", where: str | None = None) -> Path:
    """``root / rel`` resolved (symlinks followed), refused with InputError when it leaves ``root``.

    ``rel`` comes from data (a manifest line, a shard folder): absolute paths, ``..`` and links that point
    out are all refused the same way. ``where`` names the file the path came from in the message.
    """
    root = Path(root)
    text = os.fspath(rel)
    try:
        base = root.resolve()
        path = (root / text).resolve()
        ok = not os.path.isabs(text) and path.is_relative_to(base)
    except (OSError, ValueError, RuntimeError):  # a link loop, a NUL byte
        ok = False
    if not ok:
        raise InputError(f"{where or root}: {what} {text!r} lies outside the run folder")
    return root / text


def is_inside(root: str | Path, rel: str | Path) -> bool:
    try:
        inside(root, rel)
    except InputError:
        return False
    return True


def open_lock(path: str | Path, what: str | Path | None = None):
    """Open (creating) a lock file for reading and writing without following a symlink; a lock path that
    is a link or not a regular file is refused (InputError, exit 3) instead of written through."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise InputError(f"{path}: lock file is a symbolic link; probe does not write through it "
                             "(remove it and rerun)") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: lock file is not a regular file; remove it and rerun")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "a+")
    except BaseException:
        os.close(fd)
        raise


def check_output_file(path: str | Path | None, option: str = "-o") -> None:
    """An output file is a regular file or absent (a link to one counts): anything else is refused."""
    if path is None:
        return
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: {option} names a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UsageError(f"{path}: {option} names {kind}, not a regular file; give a file name")


def declared_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    return math.prod(int(s) for s in shape) * max(1, int(itemsize))


def check_dataset(ds, file: str | Path) -> None:
    """One HDF5 dataset holds its own data (no virtual or external storage) in a plausible amount."""
    name = ds.name
    if ds.is_virtual:
        raise InputError(f"{file}: dataset {name} is a virtual dataset (data from other files); refused")
    if ds.external:
        raise InputError(f"{file}: dataset {name} keeps its data in external files; refused")
    shape = ds.shape or ()
    nbytes = declared_bytes(shape, ds.dtype.itemsize)
    if nbytes > MAX_DECLARED_BYTES:
        try:
            held = int(ds.id.get_storage_size())
        except Exception:  # noqa: BLE001 - cannot tell: refuse rather than allocate
            held = 0
        if nbytes > MAX_RATIO * max(held, 1):
            raise InputError(f"{file}: dataset {name} declares {'x'.join(map(str, shape))} values "
                             f"({nbytes:,} bytes) but holds {held:,}; refused as damaged or hostile")


def check_hdf5(h5, file: str | Path) -> None:
    """Refuse external links, virtual datasets, external raw storage and implausible declared sizes."""
    import h5py

    problems: list[str] = []

    def visit(name: str, link) -> None:
        if problems:
            return
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{file}: {name} is an external link to {link.filename}; refused")
            return
        if isinstance(link, h5py.SoftLink):
            return  # soft links stay inside the file; their target is visited as itself
        obj = h5.get(name)
        if isinstance(obj, h5py.Dataset):
            try:
                check_dataset(obj, file)
            except InputError as err:
                problems.append(str(err))

    h5.visititems_links(visit)
    if problems:
        raise InputError(problems[0])
