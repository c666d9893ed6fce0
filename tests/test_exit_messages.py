"""Exit codes and messages as documented (issue 22), and results that keep their meaning.

One ``error:`` line per failure (a library's long explanation cut to its first line), broken pipes end
quietly, piped compare tables are plain TSV, the disk-full line states the real need, loader workers
ignore Ctrl-C, manifests stay strict JSON, names with line breaks stay one line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.run_folders import write_run_folder


def _errors(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------------------------- one line

def test_refused_pickle_checkpoint_is_one_line(run_cli, tmp_path):
    import torch

    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": argparse.Namespace(x=1)}, evil)  # not a plain tensor: weights_only refuses it
    r = run_cli("models", "layers", "timm:test_resnet", "--weights", evil)
    assert r.exit_code == 3, r.output
    assert len(_errors(r)) == 1 and "evil.pth: cannot read weights" in _errors(r)[0]
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


@pytest.mark.parametrize("text,line", [("a\nb\nc", "a …"), ("only", "only"), ("\n\nx", "x"), ("", "ValueError")])
def test_one_line(text, line):
    from probe.cli.main import one_line

    assert one_line(ValueError(text) if text else ValueError()) == line


# ------------------------------------------------------------------------------------- pipes

def test_broken_pipe_exits_quietly(run_cli, monkeypatch):

    import probe.cli.console as console

    def closed(*_a, **_k):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(console.click, "echo", closed)
    r = run_cli("models", "list")
    assert r.exit_code == 141
    assert r.stderr == "" and "Traceback" not in r.output


def _run_folder(tmp_path: Path, small_images) -> Path:
    return write_run_folder(tmp_path / "run", small_images, "a-rather-long-target-name-that-a-box-table-would-cut")


def test_compare_piped_is_plain_tsv(run_cli, tmp_path, small_images):
    run = _run_folder(tmp_path, small_images)
    r = run_cli("compare", run, "-a", "brightness", "-a", "contrast", "--classifier", "none", "--bootstrap", "10",
                "--per-target")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["#", "attribute", "group"]
    assert not any(ch in r.stdout for ch in "┃│━─┏")
    assert any(ln.split("\t")[1] == "brightness" for ln in lines[1:] if "\t" in ln)
    assert "a-rather-long-target-name-that-a-box-table-would-cut" in r.stdout


# ------------------------------------------------------------------------------------- disk full

def test_disk_full_states_real_need(tmp_path, monkeypatch):
    from probe.errors import InputError
    from probe.store import FeatureStore

    free = 405_504
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    st = FeatureStore(tmp_path / "s.h5", "a")
    try:
        with pytest.raises(InputError) as err:
            st.ensure_space(128_020)
    finally:
        st._broken = True
        st.close()
    msg = str(err.value)
    assert f"{128_020 + (1 << 20):,} needed" in msg and "1 MiB margin" in msg and "405,504 bytes free" in msg


# ------------------------------------------------------------------------------------- Ctrl-C

def test_loader_workers_ignore_ctrl_c():
    from probe.sources import quiet_worker

    old = signal.getsignal(signal.SIGINT)
    try:
        quiet_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_extract_passes_quiet_worker_to_loader():
    import inspect

    import probe.workflows.extract.pipeline as E

    assert "worker_init_fn=quiet_worker" in inspect.getsource(E)


# ------------------------------------------------------------------------------------- results keep meaning

def test_manifest_never_holds_nan():
    from probe.manifest import SampleRecord

    r = SampleRecord(target_id="t", sample=0, image="images/t.png", best_distance=float("nan"),
                     relative_distance=float("inf"), settings={"tau": float("-inf"), "w": [1.0, float("nan")]})
    line = r.to_json()
    obj = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert obj["best_distance"] is None and obj["relative_distance"] is None
    assert obj["settings"] == {"tau": None, "w": [1.0, None]}


@pytest.mark.parametrize("kind", ["guidance-nan", "guidance-inf"])
def test_api_guidance_numbers_must_be_finite(kind):
    from probe.diffusion.schedules import GuidanceConfig
    from probe.errors import UsageError

    value = float("nan") if kind.endswith("nan") else float("inf")
    for field in ("tau", "x0_cap", "max_distance", "rescale", "grad_blur"):
        with pytest.raises(UsageError, match="finite"):
            GuidanceConfig(**{field: value})


def test_newline_names_stay_row_aligned(run_cli, tmp_path):
    from probe.images import fs_path
    from probe.store import FeatureStore

    names = ["plain.png", "two\nlines.png", "cr\rname.png", "caf\udce9.png"]
    with FeatureStore(tmp_path / "s.h5", "a") as st:
        g = st.create_group("m/emb", dim=3, record={"model_spec": "m"}, layer="emb")
        g.append(np.ones((4, 3), np.float32), names, [f"{i:064x}" for i in range(4)])
    r = run_cli("export", tmp_path / "s.h5", "-o", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "x.paths.txt").read_text().splitlines()
    assert len(lines) == 4 and lines[1] == "two\\x0alines.png" and lines[2] == "cr\\x0dname.png"
    assert lines[3] == "caf\\xe9.png"
    assert str(fs_path(lines[1])) == "two\nlines.png"
