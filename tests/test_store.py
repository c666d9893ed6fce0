"""The HDF5 feature store: its schema as ``probe extract`` writes it, the FeatureStore API, refusal to mix
models in one group, and resuming after the extracting process is killed (SIGKILL) mid-run.

Features are checked against the encoder run directly on each file (1e-5): timm's ``test_resnet`` with
a fixed seeded checkpoint (conftest ``tiny_ckpt``), so every process computes the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import torch

import probe
from probe.errors import InputError, UsageError
from probe.images import read_image01
from probe.models.registry import load_encoder
from probe.store import FeatureStore, group_key

GROUP = "timm_test_resnet/embedding"


@pytest.fixture(scope="module")
def tiny_enc(tiny_ckpt):
    return load_encoder("timm:test_resnet", layers=["embedding", "layer4"], weights=str(tiny_ckpt), device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_enc, small_images) -> dict[str, np.ndarray]:
    """Each small image's features computed one by one, straight from the encoder: layer -> [12, D]."""
    with torch.no_grad():
        rows = [tiny_enc.features(read_image01(p)[None]) for p in small_images]
    return {layer: torch.cat([r[layer] for r in rows]).numpy() for layer in tiny_enc.layers}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, small_images, tiny_ckpt):
    """One ``probe extract`` run (embedding + layer4, batches of 5) shared by the schema tests."""
    from click.testing import CliRunner

    from probe.cli.main import cli

    store = tmp_path_factory.mktemp("store") / "feats.h5"
    before = time.time()
    r = CliRunner().invoke(cli, ["extract", str(small_images[0].parent), "-o", str(store), "-m", "timm:test_resnet",
                                 "--weights", str(tiny_ckpt), "--layer", "embedding", "--layer", "layer4",
                                 "--batch-size", "5", "--workers", "0", "--device", "cpu", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return store, json.loads(r.stdout), before


def test_summary_json(extracted):
    _, summary, _ = extracted
    assert summary["groups"] == [GROUP, "timm_test_resnet/layer4"]
    assert (summary["stored"], summary["skipped"], summary["failed"]) == (12, 0, [])
    assert summary["interrupted"] is False and summary["images_per_second"] > 0


def test_schema_datasets(extracted, small_images, reference):
    store, _, _ = extracted
    with h5py.File(store, "r") as f:
        assert sorted(f.keys()) == ["timm_test_resnet"]
        assert sorted(f["timm_test_resnet"].keys()) == ["embedding", "layer4"]
        g = f[GROUP]
        assert sorted(g.keys()) == ["features", "labels", "paths", "sha256"]
        feats = g["features"]
        assert feats.dtype == np.float32 and feats.shape == (12, 96)
        assert feats.maxshape == (None, 96) and feats.chunks is not None and feats.compression == "gzip"
        assert g["sha256"].dtype == np.dtype("S64") and g["labels"].dtype == np.int64
        assert list(g["labels"][:]) == [-1] * 12
        assert [p.decode() for p in g["paths"][:]] == [str(p) for p in small_images]
        assert [h.decode() for h in g["sha256"][:]] == [hashlib.sha256(p.read_bytes()).hexdigest()
                                                       for p in small_images]
        np.testing.assert_allclose(feats[:], reference["embedding"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(f["timm_test_resnet/layer4"]["features"][:], reference["layer4"], atol=1e-5,
                                   rtol=0)


def test_schema_attributes(extracted, tiny_ckpt):
    import timm
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=timm.create_model("test_resnet"))  # timm's own eval config
    preprocess = {"size": 160, "mean": list(cfg["mean"]), "std": list(cfg["std"]), "crop_pct": cfg["crop_pct"],
                  "interpolation": cfg["interpolation"], "in_chans": 3}
    store, _, before = extracted
    with FeatureStore(store) as st:
        assert st.group_names() == [GROUP, "timm_test_resnet/layer4"]
        for layer in ("embedding", "layer4"):
            a = st.group(f"timm_test_resnet/{layer}").attrs
            assert a["model_spec"] == "timm:test_resnet" and a["weights"] == str(tiny_ckpt)
            assert a["layer"] == layer and a["kind"] == "image"
            assert a["preprocess"] == preprocess
            assert a["keep_spatial"] is False and a["token_pool"] == "cls"
            assert a["feature_shape"] == [96]
            assert a["probe_version"] == probe.__version__ and a["torch_version"] == torch.__version__
            created = time.mktime(time.strptime(a["created"][:19], "%Y-%m-%dT%H:%M:%S"))
            assert before - 86400 < created < time.time() + 86400  # a parseable, plausible timestamp
            assert a["updated"] >= a["created"]


def test_store_group_api(extracted, small_images, reference):
    store, _, _ = extracted
    with FeatureStore(store) as st:
        g = st.group(GROUP)
        assert len(g) == 12 and g.dim == 96 and g.labels is None
        np.testing.assert_allclose(g.rows([3, 0, 3, -1]), reference["embedding"][[3, 0, 3, 11]], atol=1e-5)
        assert g.rows([]).shape == (0, 96) and g.rows(slice(2, 4)).dtype == np.float32
        with pytest.raises(UsageError, match=r"index 12 is out of range for group .* with 12 rows"):
            g.rows([12])
        assert g.index_of_path(str(small_images[4])) == 4
        assert g.index_of_path(small_images[5].name) == 5  # a unique file name is enough
        with pytest.raises(UsageError, match="no row with path 'nope.png'"):
            g.index_of_path("nope.png")
        with pytest.raises(UsageError, match="holds 2 groups .*choose one with --group"):
            st.group()
        with pytest.raises(UsageError, match=f"no group 'x/y'; groups: {GROUP}, timm_test_resnet/layer4"):
            st.group("x/y")
        assert st.describe()["groups"][0] == {"name": GROUP, "rows": 12, "dim": 96, "dtype": "float32",
                                              "labelled": False, "artifacts": [], "attrs": g.attrs}


def test_keep_spatial_records_unflattened_shape(run_cli, tmp_path, small_images, tiny_encoder_args, tiny_enc):
    store = tmp_path / "s.h5"
    r = run_cli("extract", *small_images[:2], "-o", store, *tiny_encoder_args, "--layer", "layer4",
                "--keep-spatial", "--workers", "0")
    assert r.exit_code == 0, r.output
    with FeatureStore(store) as st:
        g = st.group()
        assert g.name == "timm_test_resnet/layer4" and g.dim == 96 * 5 * 5
        assert g.attrs["feature_shape"] == [96, 5, 5] and g.attrs["keep_spatial"] is True
        rows = g.rows([0, 1]).reshape(2, 96, 5, 5)
    # the unflattened rows average back to the pooled layer4 feature
    with torch.no_grad():
        pooled = torch.cat([tiny_enc.features(read_image01(p)[None])["layer4"] for p in small_images[:2]])
    np.testing.assert_allclose(rows.mean(axis=(2, 3)), pooled.numpy(), atol=1e-5)


def _record(**over):
    rec = {"model_spec": "timm:a", "weights": "w.pth", "preprocess": {"size": 8}, "keep_spatial": False,
           "token_pool": "cls"}
    rec.update(over)
    return rec


@pytest.mark.parametrize("key,value", [("model_spec", "timm:b"), ("weights", "other.pth"),
                                       ("preprocess", {"size": 9}), ("keep_spatial", True)])
def test_create_group_refuses_another_model(tmp_path, key, value):
    path = tmp_path / "s.h5"
    with FeatureStore(path, "a") as st:
        g = st.create_group("timm_a/embedding", 4, _record(), "embedding")
        g.append(np.ones((2, 4), np.float32), ["a.png", "b.png"], ["a" * 64, "b" * 64])
        assert st.create_group("timm_a/embedding", 4, _record(), "embedding") is not None  # same model: ok
        with pytest.raises(UsageError) as err:
            st.create_group("timm_a/embedding", 4, _record(**{key: value}), "embedding")
        msg = str(err.value)
        assert str(path) in msg and f"was made with {key}=" in msg and "--overwrite" in msg
        with pytest.raises(UsageError, match="has dimension 4, not 5"):
            st.create_group("timm_a/embedding", 5, _record(), "embedding")
        g = st.create_group("timm_a/embedding", 5, _record(**{key: value}), "embedding", overwrite=True)
        assert len(g) == 0 and g.dim == 5
    with FeatureStore(path) as st:  # the replaced group is all that is left
        assert st.group_names() == ["timm_a/embedding"] and st.group().attrs[key] == value


def test_append_checks_and_float16(tmp_path):
    with FeatureStore(tmp_path / "s.h5", "a") as st:
        g = st.create_group("m/l", 3, _record(), "l", dtype="float16")
        g.append(np.array([[1.0, 2.0, 3.0]], np.float32), ["x.png"], ["c" * 64], labels=[2])
        with pytest.raises(UsageError, match="dimension 2 do not fit group m/l"):
            g.append(np.zeros((1, 2), np.float32), ["y.png"], ["d" * 64])
        with pytest.raises(ValueError):
            g.append(np.zeros((2, 3), np.float32), ["y.png"], ["d" * 64])
        assert g.features.dtype == np.float16 and g.rows([0]).dtype == np.float32
        assert list(g.labels) == [2] and g.hashes == ["c" * 64]


def test_artifacts_are_invalidated_by_new_rows(tmp_path):
    with FeatureStore(tmp_path / "s.h5", "a") as st:
        g = st.create_group("m/l", 2, _record(), "l")
        g.append(np.eye(2, dtype=np.float32), ["a", "b"], ["a" * 64, "b" * 64])
        assert st.load_artifact("m/l", "pca") is None
        st.save_artifact("m/l", "pca", {"components": np.eye(2)}, {"n_components": 2, "cfg": {"whiten": False}})
        arrays, attrs = st.load_artifact("m/l", "pca")
        np.testing.assert_array_equal(arrays["components"], np.eye(2))
        assert attrs["n_components"] == 2 and attrs["cfg"] == {"whiten": False} and attrs["n_rows"] == 2
        assert st.group_names() == ["m/l"]  # artifacts are not feature groups
        assert st.describe()["groups"][0]["artifacts"] == ["pca"]
        g.append(np.ones((1, 2), np.float32), ["c"], ["c" * 64])
        assert st.load_artifact("m/l", "pca") is None  # fitted on 2 rows, the group now has 3


def test_missing_and_unreadable_store_files(tmp_path, run_cli):
    with pytest.raises(InputError, match="feature store not found"):
        FeatureStore(tmp_path / "none.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(InputError, match=f"{junk}: not a readable HDF5 feature store"):
        FeatureStore(junk)
    r = run_cli("info", junk)
    assert r.exit_code == 3 and "not a readable HDF5 feature store" in r.stderr and "Traceback" not in r.output
    with pytest.raises(ValueError):
        FeatureStore(tmp_path / "x.h5", "w")


def test_group_key():
    assert group_key("open_clip:ViT-B-32/openai", "visual.transformer.resblocks.11") == \
        "open_clip_ViT-B-32_openai/visual.transformer.resblocks.11"
    assert group_key("bundled:efficientnet_lite0", "embedding") == "bundled_efficientnet_lite0/embedding"


# ------------------------------------------------------------------------------ resume after SIGKILL

# The child is the real CLI; only the reader of one file is made slow (as a file on a stalled network
# disk would be), so the kill lands at a known point: after batch 3 of 6 was stored and flushed.
_CHILD = """
import sys, time
import probe.workflows.extract.pipeline as E
from probe.store import FeatureStore
FeatureStore.commit_factor = 0  # commit on every flush, so what the kill leaves does not depend on timing
read = E.read_image01
def slow(path, *args):
    if "img06" in str(path):
        time.sleep(600)
    return read(path, *args)
E.read_image01 = slow
from probe.cli.main import cli
cli(sys.argv[1:], prog_name="probe")
"""


def _stderr_lines(proc) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stderr:
            q.put(line)
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, small_images, tiny_ckpt, reference, run_cli):
    store = tmp_path / "feats.h5"
    folder = small_images[0].parent
    args = ["extract", str(folder), "-o", str(store), "-m", "timm:test_resnet", "--weights", str(tiny_ckpt),
            "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = _stderr_lines(proc)
    seen = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if "extract: 6/12" in line:  # printed after the 3rd batch was appended and flushed
                break
        assert seen and "extract: 6/12" in seen[-1], "".join(seen)
        time.sleep(0.3)  # the child is now blocked reading img06
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # the killed run left a readable file with every finished batch
    with FeatureStore(store) as st:
        g = st.group(GROUP)
        assert len(g) == 6
        assert g.paths == [str(p) for p in small_images[:6]]
        np.testing.assert_allclose(g.rows(slice(None)), reference["embedding"][:6], atol=1e-5, rtol=0)

    # the rerun stores only the rest
    r = run_cli(*args[:-4], "--batch-size", "2", "--workers", "0", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["stored"], summary["skipped"], summary["failed"]) == (6, 6, [])
    with FeatureStore(store) as st:
        g = st.group(GROUP)
        assert len(g) == 12 and g.paths == [str(p) for p in small_images]
        assert len(set(g.hashes)) == 12
        np.testing.assert_allclose(g.rows(slice(None)), reference["embedding"], atol=1e-5, rtol=0)

    # and a third run has nothing left to do
    r = run_cli(*args, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 0 and json.loads(r.stdout)["skipped"] == 12
