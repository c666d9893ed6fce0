"""The store survives faults: I/O errors end in exit 3 with one line and keep every committed row; a kill
at any moment (first batch, mid-commit) leaves a store the next run resumes; a second writer is refused.

Faults are real where the machine allows it (a small tmpfs when running as root, a read-only remount)
and injected (OSError from the commit's rename, a SIGKILL at a chosen line) everywhere else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import probe.store as S
from probe.store import FeatureStore

GROUP = "timm_test_resnet/embedding"


def _args(folder, store, tiny_ckpt, *extra):
    return ["extract", str(folder), "-o", str(store), "-m", "timm:test_resnet", "--weights", str(tiny_ckpt),
            "--device", "cpu", "--batch-size", "2", "--workers", "0", *extra]


def _rows(store: Path):
    with FeatureStore(store) as st:
        g = st.group(GROUP)
        return g.rows(slice(None)), g.paths, g.hashes


def _assert_clean(store: Path, small_images, n: int | None = None):
    """Every row whole: a real path, a real hash, finite features, no duplicates, in input order."""
    feats, paths, hashes = _rows(store)
    if n is not None:
        assert len(paths) == n
    assert paths == [str(p) for p in small_images[:len(paths)]]
    assert all(len(h) == 64 for h in hashes) and len(set(hashes)) == len(hashes)
    assert np.isfinite(feats).all() and (np.abs(feats).sum(1) > 0).all()
    return len(paths)


def _one_line_error(r, fragment: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.output


# ------------------------------------------------------------------------------------- I/O errors


def test_io_error_at_commit_exit3_keeps_committed_rows(run_cli, monkeypatch, tmp_path, small_images, tiny_ckpt):
    store = tmp_path / "f.h5"
    real_replace = os.replace
    calls = {"n": 0}

    def quota(src, dst):
        calls["n"] += 1
        if calls["n"] >= 3:  # the third commit hits the quota
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_replace(src, dst)
    monkeypatch.setattr(S.FeatureStore, "commit_factor", 0.0)
    monkeypatch.setattr(S.os, "replace", quota)
    r = run_cli(*_args(small_images[0].parent, store, tiny_ckpt))
    assert r.exit_code == 3
    _one_line_error(r, f"{store}: write failed (Disk quota exceeded); the store keeps every row committed before")
    assert _assert_clean(store, small_images) == 4  # two batches of two were committed
    assert not store.with_name("f.h5.commit").exists()
    monkeypatch.setattr(S.os, "replace", real_replace)
    r = run_cli(*_args(small_images[0].parent, store, tiny_ckpt, "--json"))
    assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 8
    _assert_clean(store, small_images, 12)


def test_failed_append_rolls_back(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "a") as st:
        g = st.create_group("m/l", 3, {"model_spec": "m"}, "l")
        g.append(np.ones((2, 3), np.float32), ["a", "b"], ["a" * 64, "b" * 64])

        class Bad:
            def encode(self):
                raise OSError(errno.EIO, "Input/output error")
        with pytest.raises(OSError):
            g.append(np.ones((2, 3), np.float32), ["c", "d"], ["c" * 64, Bad()])
        assert len(g) == 2 and g.paths == ["a", "b"]
        g.append(np.zeros((1, 3), np.float32), ["e"], ["e" * 64])
    with FeatureStore(tmp_path / "f.h5") as st:
        assert st.group("m/l").paths == ["a", "b", "e"]


@pytest.fixture()
def tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only): a real disk that fills up and can be remounted read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_disk_full_exit3_keeps_rows(run_cli, monkeypatch, tmpfs, small_images, tiny_ckpt):
    store = tmpfs / "f.h5"
    images = small_images[0].parent
    r = run_cli("extract", *small_images[:4], "-o", store, "-m", "timm:test_resnet", "--weights", tiny_ckpt,
                "--device", "cpu", "--workers", "0")
    assert r.exit_code == 0, r.output
    size = store.stat().st_size
    free = shutil.disk_usage(tmpfs).free
    (tmpfs / "filler").write_bytes(b"\0" * (free - size - 2048))  # room for one commit of about this size
    monkeypatch.setattr(S.FeatureStore, "SPACE_MARGIN", 0)
    monkeypatch.setattr(S.FeatureStore, "ensure_space", lambda self, n: None)  # let the OS say it
    r = run_cli(*_args(images, store, tiny_ckpt))
    assert r.exit_code == 3
    _one_line_error(r, "write failed (No space left on device)")
    assert _assert_clean(store, small_images) >= 4
    monkeypatch.undo()
    r = run_cli(*_args(images, store, tiny_ckpt))  # still full: the free-space check speaks first
    assert r.exit_code == 3
    _one_line_error(r, f"{store}: disk full (")
    (tmpfs / "filler").unlink()
    r = run_cli(*_args(images, store, tiny_ckpt))
    assert r.exit_code == 0, r.output
    _assert_clean(store, small_images, 12)


def test_read_only_file_system_exit3(run_cli, tmpfs, small_images, tiny_ckpt):
    store = tmpfs / "f.h5"
    r = run_cli("extract", *small_images[:2], "-o", store, "-m", "timm:test_resnet", "--weights", tiny_ckpt,
                "--device", "cpu", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    r = run_cli(*_args(small_images[0].parent, store, tiny_ckpt))
    assert r.exit_code == 3
    _one_line_error(r, "Read-only file system")
    assert _assert_clean(store, small_images, 2) == 2


# ------------------------------------------------------------------------------------- kills

# The real CLI in a child that SIGKILLs itself at a chosen point.
_KILLER = """
import os, signal, stat, sys
import probe.store as S
import probe.workflows.extract.pipeline as E
point = sys.argv[1]
if point == "first-batch":
    read = E.read_image01
    def reader(path, *a):
        if "img01" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return read(path, *a)
    E.read_image01 = reader
elif point == "mid-commit":
    fsync, n = os.fsync, [0]
    def half_then_die(fd):
        n[0] += stat.S_ISREG(os.fstat(fd).st_mode)  # the commit file, not its folder
        if n[0] == 3:  # third commit: its file half written, not yet renamed
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return fsync(fd)
    S.os.fsync = half_then_die
S.FeatureStore.commit_factor = 0.0
from probe.cli.main import cli
cli(sys.argv[2:], prog_name="probe")
"""


@pytest.mark.slow
@pytest.mark.parametrize("point,kept", [("first-batch", 0), ("mid-commit", 4)])
def test_kill_at_any_moment_then_resume(point, kept, run_cli, tmp_path, small_images, tiny_ckpt):
    store = tmp_path / "f.h5"
    args = _args(small_images[0].parent, store, tiny_ckpt)
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9, proc.stderr
    if kept:
        assert _assert_clean(store, small_images) == kept
    else:
        assert not store.exists() or len(_rows(store)[1]) == 0
    r = run_cli(*args, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stored"] == 12 - kept
    _assert_clean(store, small_images, 12)
    assert not store.with_name("f.h5.commit").exists()


# ------------------------------------------------------------------------------------- concurrency


def test_second_writer_is_refused_with_pid(run_cli, tmp_path, small_images, tiny_ckpt):
    store = tmp_path / "f.h5"
    with FeatureStore(store, "a"):
        r = run_cli(*_args(small_images[0].parent, store, tiny_ckpt))
        assert r.exit_code == 2
        _one_line_error(r, f"locked by another probe process (pid {os.getpid()})")
    r = run_cli(*_args(small_images[0].parent, store, tiny_ckpt))
    assert r.exit_code == 0, r.output
