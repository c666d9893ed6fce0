"""probe.locking: one writer per output, a clear refusal naming the holder, nothing stale after a kill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from probe.errors import UsageError
from probe.locking import ProbeLock, lock_path_for


def test_second_exclusive_lock_is_refused_with_pid(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with ProbeLock(out) as lock:
        assert lock.path == out / ".probe.lock" and lock.path.is_file()
        with pytest.raises(UsageError, match=rf"locked by another probe process \(pid {os.getpid()}\)"):
            ProbeLock(out).acquire()
    assert not (out / ".probe.lock").exists()  # released and removed
    with ProbeLock(out):  # free again
        pass


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    store = tmp_path / "f.h5"
    assert lock_path_for(store) == tmp_path / "f.h5.lock"
    a, b = ProbeLock(store, shared=True).acquire(), ProbeLock(store, shared=True).acquire()
    with pytest.raises(UsageError, match="locked by another probe process"):
        ProbeLock(store).acquire()
    a.release()
    assert lock_path_for(store).exists()  # b still holds it
    with pytest.raises(UsageError):
        ProbeLock(store).acquire()
    b.release()
    with ProbeLock(store):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from probe.locking import ProbeLock; lock = ProbeLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"pid {proc.pid}"):
            ProbeLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    with ProbeLock(tmp_path):  # the kernel dropped the dead process's lock; the leftover file is reused
        pass
