"""Checks that an output can be written, made before any slow work (sampling, measuring) starts.

A read-only folder or an output path naming a directory must cost one line and a second, not an hour
of decoding followed by a crash when the first image is saved.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from probe.errors import InputError, UsageError


def check_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written in it (UsageError/InputError otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: {option} names a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe_file = tempfile.mkstemp(prefix=".probe-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe_file)
    except OSError as exc:
        raise InputError(f"{path}: cannot write output here ({exc.strerror or exc})") from exc
    return path


def check_writable_file(path: str | Path | None, option: str) -> None:
    """``path`` can be created or replaced: not a directory, its folder exists or can be made and is writable."""
    if path is None:
        return
    from probe.containment import check_output_file

    path = Path(path)
    check_output_file(path, option)  # a device node, FIFO or socket is never replaced or hung on
    if path.is_dir():
        raise UsageError(f"{path}: {option} names a directory; give a file name")
    check_writable_dir(path.parent if str(path.parent) else Path("."), option)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{path}: cannot write output here (file is read-only)")
