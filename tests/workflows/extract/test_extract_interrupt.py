"""Ctrl-C during ``probe extract`` with loader workers: exit 130, one line, no traceback (issue 22).

The terminal sends SIGINT to the whole process group (the main process and its DataLoader workers); the
test does the same with ``killpg`` on a command started in its own session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]


def _images(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def _interrupt(cmd: list[str], store: Path, delay: float, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
                            cwd=store.parent)
    try:
        deadline = time.monotonic() + timeout
        while not store.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.5])  # while the workers start; while they read
def test_ctrl_c_with_loader_workers_exits_130_without_traceback(tmp_path, tiny_ckpt, delay):
    _images(tmp_path / "imgs", 200)
    store = tmp_path / "s.h5"
    cmd = [sys.executable, "-m", "probe", "extract", str(tmp_path / "imgs"), "-o", str(store), "--workers", "2",
           "--batch-size", "4", "-m", "timm:test_resnet", "--weights", str(tiny_ckpt), "--device", "cpu"]
    r = _interrupt(cmd, store, delay)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr[-2000:]
    assert "interrupted" in r.stderr


def test_a_worker_failure_caused_by_the_same_ctrl_c_is_an_interrupt(tmp_path, small_images, tiny_ckpt,
                                                                    monkeypatch):
    """The loader's "worker exited unexpectedly" after a SIGINT is the interrupt, not an error; without a
    SIGINT it stays an error."""
    import probe
    from probe.workflows.extract import pipeline

    def dying(self, i):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a worker does; the main process then sees the worker gone
        raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")

    monkeypatch.setattr(pipeline._ImageFiles, "__getitem__", dying)
    enc = probe.load_encoder("timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    summary = pipeline.extract_images(enc, small_images[:2], tmp_path / "s.h5", pipeline.ExtractConfig())
    assert summary.interrupted and summary.stored == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def failing(self, i):
        raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")

    monkeypatch.setattr(pipeline._ImageFiles, "__getitem__", failing)
    with pytest.raises(RuntimeError):
        pipeline.extract_images(enc, small_images[:2], tmp_path / "t.h5", pipeline.ExtractConfig())


def test_quiet_worker_hides_only_the_gone_main_process(monkeypatch):
    """A worker ignores SIGINT, and its threads (multiprocessing's fd sharer reports through
    ``sys.excepthook``) stay quiet about a connection the stopped main process reset; other errors show."""
    import threading

    from probe.sources import quiet_worker

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda t, v, tb: seen.append(t))
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    old = signal.getsignal(signal.SIGINT)
    try:
        quiet_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        for exc in (ConnectionResetError, BrokenPipeError, EOFError, ValueError):
            sys.excepthook(exc, exc(), None)
            threading.excepthook(threading.ExceptHookArgs((exc, exc(), None, None)))
    finally:
        signal.signal(signal.SIGINT, old)
    assert seen == [ValueError, ValueError]


def test_a_dropped_ctrl_c_still_stops_the_run_quietly(monkeypatch):
    """A KeyboardInterrupt raised where Python drops it ("Exception ignored in ...") is neither printed nor
    lost: the run stops at the next batch, marked interrupted."""
    from probe.workflows.extract.pipeline import _CtrlC

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: printed.append(info.exc_type))
    ctrl_c = _CtrlC()
    try:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as exc:
            dropped = exc
        sys.unraisablehook(type("U", (), {"exc_type": KeyboardInterrupt, "exc_value": dropped})())
        sys.unraisablehook(type("U", (), {"exc_type": ValueError, "exc_value": ValueError()})())
    finally:
        ctrl_c.restore()
    assert ctrl_c.seen and printed == [ValueError]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
