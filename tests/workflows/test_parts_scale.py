"""Scaling out: sharded extract/decode equal one process bit for bit, decodes resume, tar/parquet inputs.

The torchrun test launches two real gloo processes on the CPU; everything else runs the same code paths
in-process with explicit shards (``--shard i/N`` is the same split without a process group).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import probe
from probe.diffusion.schedules import GuidanceConfig
from probe.distributed import Shard
from probe.errors import UsageError
from probe.locking import ProbeLock
from probe.sources import collect_sources, expand_braces
from probe.targets import encode_images01, feature_dim, vector_target
from probe.workflows.decode import pipeline as decoding
from probe.workflows.decode.merge import merge_decodes
from probe.workflows.decode.pipeline import DecodeSettings, decode_targets
from tests.tiny_diffusion import save_pixel_prior, tiny_encoder, tiny_pixel_prior

torch.set_num_threads(1)  # CPU results depend on the thread count; torchrun's ranks use 1 thread each

CFG = GuidanceConfig(name="test", steps=3, rounds=1, early_steps=0, update="ddim")
TIMING = {"seconds", "batch_seconds"}
GROUP = "timm_test_resnet/embedding"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup():
    prior, enc = tiny_pixel_prior(), tiny_encoder()
    dim = feature_dim(enc)
    vecs = encode_images01(enc, torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))).numpy()
    return prior, enc, [vector_target(v, f"t{i}", "test", dim) for i, v in enumerate(vecs)]


def _store_rows(path: Path) -> dict:
    """Every dataset of an HDF5 file as lists (attributes such as creation times left out)."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[:].tolist()
    with h5py.File(path) as f:
        f.visititems(visit)
    return out


def snapshot(out: Path) -> dict:
    """Everything a decode folder says, minus wall-clock times."""
    recs = [{k: v for k, v in json.loads(ln).items() if k not in TIMING}
            for ln in (out / "manifest.jsonl").read_text().splitlines()]
    files = {str(p.relative_to(out)): p.read_bytes() for d in ("images", "final", "baseline")
             for p in sorted((out / d).glob("*.png"))}
    return {"records": recs, "files": files, "features": _store_rows(out / "features.h5")}


SETTINGS = DecodeSettings(samples=2, batch_size=4, config=CFG)  # 6 (target, sample) pairs in batches of 4, 2


def test_two_shards_merged_equal_one_process(tmp_path, setup):
    prior, enc, targets = setup
    decode_targets(prior, enc, targets, tmp_path / "one", SETTINGS)
    for i in (1, 0):
        part = decode_targets(prior, enc, targets, tmp_path / "two", SETTINGS, shard=Shard(i, 2))
        assert len(part.records) == (4 if i == 0 else 2)
    assert not (tmp_path / "two" / "manifest.jsonl").exists()
    merge_decodes(tmp_path / "two")
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    assert not (tmp_path / "two" / "shards").exists() and (tmp_path / "two" / "contact_sheet.png").is_file()


def test_interrupted_decode_resumes_to_the_same_result(tmp_path, setup, monkeypatch):
    prior, enc, targets = setup
    decode_targets(prior, enc, targets, tmp_path / "ref", SETTINGS)
    real = decoding.sample_stream

    def dies(*args, **kw):  # the queue writes 4 samples, then the kill
        for n, item in enumerate(real(*args, **kw)):
            if n == 4:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(decoding, "sample_stream", dies)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        decode_targets(prior, enc, targets, out, SETTINGS)
    monkeypatch.setattr(decoding, "sample_stream", real)
    # a kill between the feature rows and the manifest lines: one record cut in half, its rows already written
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4
    (out / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    again = decode_targets(prior, enc, targets, out, SETTINGS)
    assert again.resumed == 2 and len(again.records) == 6
    assert snapshot(out) == snapshot(tmp_path / "ref")


def test_resume_refuses_other_settings_and_a_locked_folder(tmp_path, setup):
    prior, enc, targets = setup
    out = tmp_path / "out"
    decode_targets(prior, enc, targets[:1], out, SETTINGS)
    with pytest.raises(UsageError, match=r"made with settings.seed=0, not 1; .*--overwrite"):
        decode_targets(prior, enc, targets[:1], out, dataclasses.replace(SETTINGS, seed=1))
    # chains per call (--batch-size) no longer changes which images a sample gets: a rerun with another resumes
    assert decode_targets(prior, enc, targets[:1], out, dataclasses.replace(SETTINGS, batch_size=2)).resumed == 2
    with ProbeLock(out, lock_file=out / ".probe.lock"):
        with pytest.raises(UsageError, match=rf"{out}: locked by another probe process \(pid {os.getpid()}\)"):
            decode_targets(prior, enc, targets[:1], out, SETTINGS)


# -- extraction ------------------------------------------------------------------------------------------
def test_extract_shards_merge_to_the_single_process_store(run_cli, tmp_path, small_images, copy_images,
                                                          tiny_encoder_args):
    images = copy_images(small_images[:7])
    dup = tmp_path / "images" / "zz_copy.png"  # same bytes as images[1]: stored once, at its first position
    dup.write_bytes(images[1].read_bytes())
    args = [tmp_path / "images", *tiny_encoder_args, "--batch-size", "2", "--workers", "0"]
    assert run_cli("-q", "extract", *args, "-o", tmp_path / "one.h5").exit_code == 0
    for i in (2, 0, 1):
        r = run_cli("-q", "extract", *args, "-o", tmp_path / "two.h5", "--shard", f"{i}/3")
        assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "two.h5").exists() and len(list((tmp_path / "two.h5.shards").glob("*.h5"))) == 3
    r = run_cli("merge", tmp_path / "two.h5", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["duplicates_skipped"] == 0
    assert _store_rows(tmp_path / "two.h5") == _store_rows(tmp_path / "one.h5")
    assert len(_store_rows(tmp_path / "one.h5")["timm_test_resnet/embedding/paths"]) == 7
    assert not (tmp_path / "two.h5.shards").exists()
    r = run_cli("merge", tmp_path / "two.h5")
    assert r.exit_code == 2 and "no shards to merge" in r.stderr


def test_killed_shards_and_a_killed_merge_resume_without_loss_or_duplicates(run_cli, tmp_path, small_images,
                                                                           tiny_encoder_args, monkeypatch):
    import probe.workflows.extract.merge as M
    import probe.workflows.extract.pipeline as E
    from probe.store import StoreGroup

    args = [*small_images[:8], *tiny_encoder_args, "--batch-size", "2", "--workers", "0"]
    assert run_cli("-q", "extract", *args, "-o", tmp_path / "one.h5").exit_code == 0
    read = E.read_image01

    def killed(path, *args):  # shard 0 owns batches 0 and 2: the kill comes in its second batch
        if Path(path).name == small_images[4].name:
            raise KeyboardInterrupt
        return read(path, *args)
    monkeypatch.setattr(E, "read_image01", killed)
    r = run_cli("-q", "extract", *args, "-o", tmp_path / "two.h5", "--shard", "0/2")
    assert r.exit_code == 130
    monkeypatch.setattr(E, "read_image01", read)
    r = run_cli("-q", "extract", *args, "-o", tmp_path / "two.h5", "--shard", "0/2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 2 and json.loads(r.stdout)["stored"] == 2
    assert run_cli("-q", "extract", *args, "-o", tmp_path / "two.h5", "--shard", "1/2").exit_code == 0
    monkeypatch.setattr(M, "CHUNK", 3)  # the merge appends 3 rows at a time and is killed after the first 3
    real_append, calls = StoreGroup.append, []

    def dies(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_append(self, *a, **kw)
    monkeypatch.setattr(StoreGroup, "append", dies)
    with pytest.raises(KeyboardInterrupt):
        M.merge_stores(tmp_path / "two.h5")
    monkeypatch.setattr(StoreGroup, "append", real_append)
    assert len(_store_rows(tmp_path / "two.h5")["timm_test_resnet/embedding/paths"]) == 3
    assert run_cli("-q", "merge", tmp_path / "two.h5").exit_code == 0
    assert _store_rows(tmp_path / "two.h5") == _store_rows(tmp_path / "one.h5")


def test_decode_shard_cli_and_merge(run_cli, tmp_path, small_images, tiny_encoder_args):
    prior = save_pixel_prior(tmp_path / "prior")
    dec = ["--prior", prior, *tiny_encoder_args, "--image", small_images[0], "--image", small_images[1], "-n", "2",
           "--batch-size", "3", "--steps", "2", "--rounds", "1", "--early-steps", "0", "--late-steps", "0"]
    assert run_cli("-q", "decode", *dec, "-o", tmp_path / "one").exit_code == 0
    for i in (0, 1):
        r = run_cli("decode", *dec, "-o", tmp_path / "two", "--shard", f"{i}/2")
        assert r.exit_code == 0 and f"run 'probe merge {tmp_path / 'two'}'" in r.stderr
    r = run_cli("-q", "decode", *dec, "-o", tmp_path / "two", "--shard", "0/2", "--seed", "5")
    assert r.exit_code == 2 and "settings.seed=0, not 5" in r.stderr
    r = run_cli("merge", tmp_path / "two", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["records"] == 4
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    r = run_cli("-q", "decode", *dec, "-o", tmp_path / "two", "--json")  # complete: a rerun decodes nothing
    assert r.exit_code == 0 and json.loads(r.stdout)["resumed"] == 4


# -- webdataset / parquet inputs ---------------------------------------------------------------------------
def test_brace_patterns_expand_like_bash():
    assert expand_braces("s/{00008..00011}.tar") == [f"s/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def _webdataset(root: Path, images: list[Path], per_shard: int) -> None:
    """img2dataset's layout: NNNNN.tar holding key.png + key.json (+ key.txt) per sample."""
    root.mkdir()
    for s in range(0, len(images), per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for k, img in enumerate(images[s:s + per_shard]):
                key = f"{s + k:09d}"
                for name, data in ((f"{key}.png", img.read_bytes()), (f"{key}.json", b'{"caption": "x"}'),
                                   (f"{key}.txt", b"x")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_webdataset_and_parquet_inputs_extract_like_files(run_cli, tmp_path, small_images, tiny_encoder_args):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = small_images[:5]
    _webdataset(tmp_path / "wds", images, per_shard=2)  # 00000.tar 00001.tar 00002.tar
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(5)], "jpg": [p.read_bytes() for p in images]}),
                   tmp_path / "part.parquet", row_group_size=2)
    items = collect_sources([str(tmp_path / "wds" / "{00000..00002}.tar")])
    assert [i.key for i in items][:3] == [f"{tmp_path}/wds/00000.tar::000000000.png",
                                          f"{tmp_path}/wds/00000.tar::000000001.png",
                                          f"{tmp_path}/wds/00001.tar::000000002.png"]
    args = [*tiny_encoder_args, "--batch-size", "2", "--workers", "1"]
    for name, inputs in (("files", images), ("wds", [tmp_path / "wds" / "{00000..00002}.tar"]),
                         ("pq", [tmp_path / "part.parquet"])):
        r = run_cli("-q", "extract", *inputs, *args, "-o", tmp_path / f"{name}.h5", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 5, r.stderr
    rows = {n: _store_rows(tmp_path / f"{n}.h5") for n in ("files", "wds", "pq")}
    g = "timm_test_resnet/embedding/"
    for n in ("wds", "pq"):
        np.testing.assert_array_equal(rows[n][g + "features"], rows["files"][g + "features"])
        assert rows[n][g + "sha256"] == [hashlib.sha256(p.read_bytes()).hexdigest().encode() for p in images]
    assert rows["pq"][g + "paths"][4] == f"{tmp_path}/part.parquet::k4".encode()
    r = run_cli("-q", "extract", tmp_path / "wds" / "{00000..00002}.tar", *args, "-o", tmp_path / "wds.h5",
                "--json")  # resume by content hash
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 5
    (tmp_path / "bad.tar.gz").write_bytes(b"x")
    r = run_cli("extract", tmp_path / "bad.tar.gz", *args, "-o", tmp_path / "x.h5")
    assert r.exit_code == 2 and "bad.tar.gz: compressed tar" in r.stderr


# -- the same through the Python API ----------------------------------------------------------------------
def test_api_extract_shards_merge_to_the_single_process_store(tmp_path, small_images, tiny_ckpt):
    enc = probe.EncoderOptions(spec="timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    kw = {"batch_size": 2, "workers": 0}
    one = probe.extract(enc, small_images[:5], out=tmp_path / "one.h5", **kw)
    assert one.plan.shard.single and one.summaries[0].stored == 5 and not one.awaits_merge
    parts = [probe.extract(enc, small_images[:5], out=tmp_path / "two.h5", shard=s, **kw)
             for s in ("1/2", probe.Shard(0, 2))]
    assert [p.plan.images for p in parts] == [2, 3]  # batches [0 1] [2 3] [4]: shard 0 owns the first and last
    assert all(p.awaits_merge and p.plan.shard_store.is_file() for p in parts)
    assert [p.summaries[0].stored for p in parts] == [2, 3] and not (tmp_path / "two.h5").exists()
    merged = probe.merge(tmp_path / "two.h5")
    assert merged.store.added == {GROUP: 5} and not (tmp_path / "two.h5.shards").exists()
    assert _store_rows(tmp_path / "two.h5") == _store_rows(tmp_path / "one.h5")
    with pytest.raises(UsageError, match="give out=STORE"):
        probe.extract(enc, small_images[:2], shard="0/2")
    with pytest.raises(UsageError, match="delete STORE and STORE.shards/"):
        probe.extract(enc, small_images[:2], out=tmp_path / "x.h5", shard="0/2", overwrite=True)
    with pytest.raises(UsageError, match="expected i/N"):
        probe.extract(enc, small_images[:2], out=tmp_path / "x.h5", shard="half")


def test_api_extract_reads_tar_and_parquet_like_files(tmp_path, small_images, tiny_ckpt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    enc = probe.load_encoder("timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    images = small_images[:5]
    _webdataset(tmp_path / "wds", images, per_shard=2)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(5)], "pixels": [p.read_bytes() for p in images]}),
                   tmp_path / "part.parquet", row_group_size=2)
    files = probe.extract(enc, images, workers=0)
    tars = probe.extract(enc, str(tmp_path / "wds" / "{00000..00002}.tar"), workers=0)
    table = probe.extract(enc, [tmp_path / "part.parquet"], image_column="pixels", workers=0)
    for res in (tars, table):  # the rows come back in input order, read by their container keys
        np.testing.assert_array_equal(res.features["embedding"], files.features["embedding"])
    assert [p.key for p in table.paths] == [f"{tmp_path}/part.parquet::k{i}" for i in range(5)]
    with pytest.raises(UsageError, match="no image column"):
        probe.extract(enc, [tmp_path / "part.parquet"])



def test_api_decode_shards_merge_to_the_single_process_folder(tmp_path, small_images, tiny_ckpt):
    """probe.decode takes probe decode's targets (a store row, an image file) and its --shard parts."""
    # no spec: the store's encoder, as 'probe decode --from' infers it; its pickle checkpoint is confirmed by
    # naming it (a store never chooses a pickle to load, issue 22)
    enc = probe.EncoderOptions(weights=str(tiny_ckpt), device="cpu")
    probe.extract(probe.EncoderOptions(spec="timm:test_resnet", weights=str(tiny_ckpt), device="cpu"),
                  small_images[:3], out=tmp_path / "f.h5", workers=0)
    targets = probe.Targets(store=tmp_path / "f.h5", index=1, images=small_images[3])
    assert targets.index == "1" and targets.images == (small_images[3],)
    kw = {"prior": tiny_pixel_prior(), "samples": 2, "batch_size": 3, "steps": 2, "rounds": 1, "early_steps": 0,
          "late_steps": 0}
    one = probe.decode(enc, targets, out=tmp_path / "one", **kw)
    assert [(t.kind, t.index) for t in one.targets] == [("hdf5", 1), ("image", None)]
    assert one.plan.encoder.spec == "timm:test_resnet" and one.has_report and not one.awaits_merge
    assert one.images.shape[0] == 4 and one.merged is None
    parts = [probe.decode(enc, targets, out=tmp_path / "two", shard=s, **kw) for s in ("1/2", probe.Shard(0, 2))]
    assert [len(p) for p in parts] == [1, 3]  # (target, sample) batches [0 1 2] [3]: shard 1 owns the second
    assert all(p.awaits_merge and not p.has_report and p.images.numel() == 0 for p in parts)
    assert [p.plan.shard_dir.name for p in parts] == ["00001-of-00002", "00000-of-00002"]
    assert not (tmp_path / "two" / "manifest.jsonl").exists()
    merged = probe.merge(tmp_path / "two")
    assert len(merged.records) == 4 and not (tmp_path / "two" / "shards").exists()
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    with pytest.raises(UsageError, match="give out=FOLDER"):
        probe.decode(enc, targets, shard="0/2", **kw)
    with pytest.raises(UsageError, match="expected i/N"):
        probe.decode(enc, targets, out=tmp_path / "x", shard="half", **kw)
    with pytest.raises(UsageError, match="give it with --from FILE"):
        probe.decode(probe.EncoderOptions(device="cpu"), probe.Targets(index="0", images=small_images[3]), **kw)

# -- torchrun -------------------------------------------------------------------------------------------
def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "probe",
           "-q", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_one_process(run_cli, tmp_path, small_images, tiny_encoder_args):
    threads = torch.get_num_threads()  # the in-process reference runs with one thread, as each rank does
    torch.set_num_threads(1)
    try:
        _torchrun_identity(run_cli, tmp_path, small_images, tiny_encoder_args)
    finally:
        torch.set_num_threads(threads)


def _torchrun_identity(run_cli, tmp_path, small_images, tiny_encoder_args):
    prior = save_pixel_prior(tmp_path / "prior")
    ext = [*small_images[:6], *tiny_encoder_args, "--batch-size", "2", "--workers", "0"]
    assert run_cli("-q", "extract", *ext, "-o", tmp_path / "one.h5").exit_code == 0
    r = _torchrun("extract", *ext, "-o", tmp_path / "two.h5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _store_rows(tmp_path / "two.h5") == _store_rows(tmp_path / "one.h5")

    dec = ["--prior", prior, *tiny_encoder_args, "--from", tmp_path / "one.h5", "--index", "0:3", "-n", "2",
           "--batch-size", "2", "--steps", "3", "--rounds", "1", "--early-steps", "0", "--late-steps", "0"]
    # the reference is a separate plain process too, free of any state earlier tests left in this one
    r = subprocess.run([sys.executable, "-m", "probe", "-q", "decode", *[str(a) for a in dec], "-o",
                        str(tmp_path / "d1")], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    r = _torchrun("decode", *dec, "-o", tmp_path / "d2")
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = snapshot(tmp_path / "d1"), snapshot(tmp_path / "d2")
    for key in one:  # name what differs, if anything does
        assert two[key] == one[key], (key, [k for k in one[key] if two[key].get(k) != one[key][k]]
                                      if isinstance(one[key], dict) else
                                      [(k, a.get(k), b.get(k)) for a, b in zip(one[key], two[key]) for k in a
                                       if a.get(k) != b.get(k)][:5])
    assert not (tmp_path / "d2" / "shards").exists()
