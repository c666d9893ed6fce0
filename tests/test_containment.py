"""Containment (issue 22): nothing outside a run folder or store is read, written, moved or followed.

One mechanism, ``probe.containment``: paths named by data go through ``inside``; locks are opened with
``O_NOFOLLOW``; outputs are regular files or absent; HDF5 files with external links, virtual datasets,
external raw storage or absurd declared sizes are refused. Every case: the documented exit code, one
``error:`` line, and the outside file untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from probe.containment import inside
from probe.errors import InputError, UsageError
from probe.store import FeatureStore


def _one_error(r, code: int, fragment: str) -> None:
    assert r.exit_code == code, f"exit {r.exit_code}, expected {code}\n{r.output}"
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.stderr


# ------------------------------------------------------------------------------------- inside()

@pytest.mark.parametrize("rel", ["../x.txt", "../../../etc/hostname", "/etc/hostname", "a/../../x", "link/x.png",
                                 "loop"])
def test_inside_refuses_what_leaves(tmp_path, rel):
    root = tmp_path / "run"
    (root / "a").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(InputError, match="lies outside the run folder"):
        inside(root, rel)


@pytest.mark.parametrize("rel", ["images/x.png", "a/../images/x.png", "x"])
def test_inside_keeps_what_stays(tmp_path, rel):
    root = tmp_path / "run"
    (root / "a").mkdir(parents=True)
    assert inside(root, rel) == root / rel


# ------------------------------------------------------------------------------------- probe merge DIR

def _decode_with_shard(tmp_path: Path, image: str) -> tuple[Path, Path]:
    out = tmp_path / "out"
    shard = out / "shards" / "0-of-2"
    (shard / "images").mkdir(parents=True)
    victim = tmp_path / "x.txt"
    victim.write_text("keep me")
    rec = {"target_id": "t", "target_index": 0, "sample": 0, "image": image, "settings": {"samples": 1, "seed": 0}}
    (shard / "manifest.jsonl").write_text(json.dumps(rec) + "\n")
    return out, victim


@pytest.mark.parametrize("image", ["../../../x.txt", "ABS"])
def test_merge_never_moves_files_named_outside(run_cli, tmp_path, image):
    out, victim = _decode_with_shard(tmp_path, str(tmp_path / "x.txt") if image == "ABS" else image)
    r = run_cli("merge", out)
    _one_error(r, 3, "lies outside the run folder")
    assert victim.read_text() == "keep me"


# ------------------------------------------------------------------------------------- locks

@pytest.mark.parametrize("lock_name", ["s.h5.writer.lock"])
def test_writer_lock_symlink_never_overwrites_target(tmp_path, lock_name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / lock_name).symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        FeatureStore(tmp_path / "s.h5", "a")
    assert victim.read_text() == "precious\n"


def test_folder_lock_symlink_never_overwrites_target(tmp_path):
    from probe.locking import ProbeLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    d = tmp_path / "run"
    d.mkdir()
    (d / ".probe.lock").symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        ProbeLock(d).acquire()
    assert victim.read_text() == "precious\n"


def test_lock_fifo_refused(tmp_path):
    from probe.locking import ProbeLock

    d = tmp_path / "run"
    d.mkdir()
    os.mkfifo(d / ".probe.lock")
    with pytest.raises(InputError, match="not a regular file"):
        ProbeLock(d).acquire()


def test_cli_extract_lock_symlink_exit3(run_cli, tmp_path, small_images, tiny_ckpt):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "s.h5.writer.lock").symlink_to(victim)
    r = run_cli("extract", small_images[0], "-o", tmp_path / "s.h5", "-m", "timm:test_resnet", "--weights",
                tiny_ckpt, "--device", "cpu", "--workers", "0")
    _one_error(r, 3, "symbolic link")
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------------------------- outputs

def _special(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        p = tmp_path / "out.npy"
        os.mkfifo(p)
        return p
    return Path("/dev/null")


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_images, tiny_ckpt):
    from click.testing import CliRunner

    from probe.cli.main import cli

    path = tmp_path_factory.mktemp("cont") / "s.h5"
    r = CliRunner().invoke(cli, ["-q", "extract", *map(str, small_images[:2]), "-o", str(path), "-m",
                                 "timm:test_resnet", "--weights", str(tiny_ckpt), "--device", "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    return path


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_export_output_must_be_regular(run_cli, tmp_path, store, kind):
    out = _special(tmp_path, kind)
    r = run_cli("export", store, "-o", out)
    _one_error(r, 2, "not a regular file")
    assert out.exists() and not out.is_file()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_extract_output_must_be_regular(run_cli, tmp_path, small_images, tiny_ckpt, kind):
    out = _special(tmp_path, kind)
    r = run_cli("extract", small_images[0], "-o", out, "-m", "timm:test_resnet", "--weights", tiny_ckpt,
                "--device", "cpu", "--workers", "0")
    _one_error(r, 2, "not a regular file")
    assert out.exists() and not out.is_file()


def test_store_api_refuses_device(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        FeatureStore("/dev/null", "a")


# ------------------------------------------------------------------------------------- HDF5

def _probe_group(h: h5py.File, n: int = 2, dim: int = 4) -> h5py.Group:
    g = h.create_group("m/emb")
    g.create_dataset("features", data=np.ones((n, dim), np.float32))
    g.create_dataset("paths", data=[f"{i}.png" for i in range(n)], dtype=h5py.string_dtype())
    g.create_dataset("sha256", data=[b"0" * 64] * n, dtype="S64")
    g.attrs["model_spec"] = "timm:test_resnet"
    g.attrs["layer"] = "emb"
    return g


def _hostile(tmp_path: Path, kind: str) -> Path:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET!!" * 64)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h:
        h.create_dataset("labels", data=np.arange(2, dtype=np.int64))
    path = tmp_path / f"{kind}.h5"
    with h5py.File(path, "w") as h:
        g = _probe_group(h)
        if kind == "external-link":
            g["labels"] = h5py.ExternalLink(str(other), "/labels")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(2,), dtype=np.int64)
            layout[:] = h5py.VirtualSource(str(other), "labels", shape=(2,))
            g.create_virtual_dataset("labels", layout)
        elif kind == "external-raw":
            g.create_dataset("labels", shape=(2,), dtype=np.int64, external=[(str(secret), 0, 16)])
        elif kind == "rows-4e8":
            del g["paths"], g["sha256"], g["features"]
            g.create_dataset("features", shape=(400_000_000, 4), maxshape=(None, 4), chunks=(1024, 4),
                             dtype=np.float32)
            g.create_dataset("paths", shape=(400_000_000,), maxshape=(None,), chunks=(1024,),
                             dtype=h5py.string_dtype())
            g.create_dataset("sha256", shape=(400_000_000,), maxshape=(None,), chunks=(1024,), dtype="S64")
            g.create_dataset("labels", shape=(400_000_000,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        elif kind == "rows-2e40":
            del g["paths"], g["sha256"], g["features"]
            g.create_dataset("features", shape=(2**40, 4), maxshape=(None, 4), chunks=(1024, 4), dtype=np.float32)
            g.create_dataset("paths", shape=(2**40,), maxshape=(None,), chunks=(1024,), dtype=h5py.string_dtype())
            g.create_dataset("sha256", shape=(2**40,), maxshape=(None,), chunks=(1024,), dtype="S64")
    return path


HOSTILE = [("external-link", "external link"), ("virtual", "virtual dataset"),
           ("external-raw", "external files"), ("rows-4e8", "declares"), ("rows-2e40", "declares")]


@pytest.mark.parametrize("kind,fragment", HOSTILE, ids=[h[0] for h in HOSTILE])
@pytest.mark.parametrize("command", ["info", "export", "decode"])
def test_hostile_hdf5_refused(run_cli, tmp_path, kind, fragment, command):
    path = _hostile(tmp_path, kind)
    argv = {"info": ["info", path],
            "export": ["export", path, "-o", tmp_path / "x.npy"],
            "decode": ["decode", "--from", path, "--index", "0", "-m", "timm:test_resnet", "--weights", "random",
                       "--device", "cpu", "-o", tmp_path / "d"]}[command]
    r = run_cli(*argv)
    _one_error(r, 3, fragment)
    assert not (tmp_path / "x.labels.npy").exists()


def test_hdf5_soft_links_inside_are_fine(tmp_path):
    path = tmp_path / "soft.h5"
    with h5py.File(path, "w") as h:
        g = _probe_group(h)
        g["alias"] = h5py.SoftLink("/m/emb/features")
    with FeatureStore(path) as st:
        assert len(st.group("m/emb")) == 2


# ------------------------------------------------------------------------------------- run folders read back

def _run_with_images(tmp_path: Path, small_images) -> Path:
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    for s in range(2):
        Image.open(small_images[s]).save(run / "images" / f"t_s{s:02d}.png")
    (run / "manifest.jsonl").write_text("".join(
        json.dumps({"target_id": "t", "sample": s, "image": f"images/t_s{s:02d}.png"}) + "\n" for s in range(2)))
    return run


def test_compare_baseline_symlinked_out_refused(run_cli, tmp_path, small_images):
    run = _run_with_images(tmp_path, small_images)
    (run / "baseline").symlink_to(small_images[0].parent)
    r = run_cli("compare", run, "-a", "brightness", "--classifier", "none")
    _one_error(r, 3, "lies outside the run folder")


def test_compare_baseline_file_symlinked_out_refused(run_cli, tmp_path, small_images):
    run = _run_with_images(tmp_path, small_images)
    (run / "baseline").mkdir()
    (run / "baseline" / "s00.png").symlink_to(small_images[3])
    r = run_cli("compare", run, "-a", "brightness", "--classifier", "none")
    _one_error(r, 3, "lies outside the run folder")


def test_compare_image_symlinked_out_refused(run_cli, tmp_path, small_images):
    run = _run_with_images(tmp_path, small_images)
    (run / "images" / "t_s01.png").unlink()
    (run / "images" / "t_s01.png").symlink_to(small_images[5])
    (run / "baseline").mkdir()
    r = run_cli("compare", run, "-a", "brightness", "--classifier", "none")
    _one_error(r, 3, "lies outside the run folder")


def test_overlay_cell_outside_refused(tmp_path, small_images):
    from probe.workflows.walks.pipeline import load_cell

    run = _run_with_images(tmp_path, small_images)
    assert load_cell(run, "images/t_s00.png") is not None
    for rel in ("../../secret.png", str(small_images[0])):
        with pytest.raises(InputError, match="lies outside the run folder"):
            load_cell(run, rel)


def test_contact_sheet_never_draws_outside_images(tmp_path, small_images, monkeypatch):
    """A resumed decode redraws the sheet from the manifest: an outside image is an empty cell, never read."""
    import probe.images as I
    from probe.manifest import SampleRecord
    from probe.targets import Target
    from probe.workflows.decode.sheet import write_contact_sheet

    run = _run_with_images(tmp_path, small_images)
    read = []
    real = I.read_image01
    monkeypatch.setattr(I, "read_image01", lambda p, *a, **k: read.append(Path(p)) or real(p, *a, **k))
    recs = [SampleRecord(target_id="t", sample=0, image=str(small_images[0]), best_distance=1.0),
            SampleRecord(target_id="t", sample=1, image="../" * 6 + "etc/hostname", best_distance=1.0)]
    t = Target(id="t", vector=np.zeros(0, np.float32), kind="image", source="x")
    write_contact_sheet(run, recs, [t], 2, 0, "title")
    assert all(p.resolve().is_relative_to(run.resolve()) for p in read), read
