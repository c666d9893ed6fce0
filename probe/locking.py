"""Advisory locks that keep two probe processes from writing the same output.

A lock is a small file (``<target>.lock`` beside a file, ``<dir>/.probe.lock`` inside a folder) held with
``fcntl.flock`` and holding the owner's pid and host, so a refusal can say who holds it. ``flock`` is
released by the kernel when the holder dies, so a killed run never leaves a stale lock behind: the next
run simply takes it (the leftover file is reused). Shared locks let several cooperating writers (the
ranks of one sharded run, each writing its own shard) hold a folder together while an exclusive lock
(a plain single-process run, a merge) waits for none of them and is refused instead.

Only Linux/macOS (``fcntl``); on platforms without it the lock is a no-op and says so in ``held``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from probe.containment import open_lock
from probe.errors import InputError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path_for(target: str | Path) -> Path:
    """Where the lock of ``target`` lives: ``<dir>/.probe.lock`` for a folder, ``<file>.lock`` for a file."""
    target = Path(target)
    return target / ".probe.lock" if target.is_dir() else target.with_name(target.name + ".lock")


class ProbeLock:
    """``with ProbeLock(path): ...`` — refuse (UsageError, exit 2) when another process holds it.

    ``shared=True`` takes a shared lock: any number of shared holders, no exclusive one.
    """

    def __init__(self, target: str | Path, shared: bool = False, lock_file: str | Path | None = None):
        self.target = Path(target)
        self.path = Path(lock_file) if lock_file is not None else lock_path_for(self.target)
        self.shared = shared
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> ProbeLock:
        if fcntl is None or self._fh is not None:
            return self
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        for _ in range(20):  # retry only if the file we locked was unlinked by a releasing holder meanwhile
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fh = open_lock(self.path)  # never through a symlink: its target would be overwritten
            except OSError as exc:  # read-only or full file system, no permission: bad input, not a bug
                raise InputError(f"{self.target}: cannot write here ({exc.strerror or exc})") from exc
            try:
                fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
            except OSError:
                owner = self._owner(fh)
                fh.close()
                raise UsageError(f"{self.target}: locked by another probe process ({owner}); wait for it to "
                                 "finish or stop it") from None
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        else:  # pragma: no cover - pathological churn
            raise UsageError(f"{self.target}: could not take the lock {self.path}")
        if not self.shared:
            fh.seek(0)
            fh.truncate()
        fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    @staticmethod
    def _owner(fh) -> str:
        fh.seek(0)
        lines = [ln.split() for ln in fh.read().splitlines() if ln.strip()]
        if not lines:
            return "pid unknown"
        pid, *host = lines[-1]
        here = socket.gethostname()
        return f"pid {pid}" + (f" on {host[0]}" if host and host[0] != here else "")

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            # the last holder removes the file; an exclusive try tells us whether we are the last
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            fh.close()

    def __enter__(self) -> ProbeLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
