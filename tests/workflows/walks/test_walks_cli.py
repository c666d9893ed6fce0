"""``probe interpolate``, ``probe perturb`` and ``probe map`` end to end through the CLI group.

Tiny stand-ins only: a random 16-px DDPM prior saved as a diffusers folder, a TorchScript conv net
(128-d features of 16-px grey images) and small feature stores written with FeatureStore directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from probe.store import FeatureStore, group_key
from tests.tiny_diffusion import TinyConvNet, save_pixel_prior

torch.set_num_threads(1)

FAST = ["--schedule", "fast", "--steps", "3", "--rounds", "1", "--early-steps", "0", "--device", "cpu"]
LABELS = ["shirt", "trouser", "shoe"]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return save_pixel_prior(tmp_path_factory.mktemp("prior") / "ddpm")


@pytest.fixture(scope="module")
def enc_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    path = root / "conv.pt"
    torch.jit.trace(TinyConvNet(1).eval(), torch.zeros(1, 1, 16, 16)).save(str(path))
    (root / "conv.pt.json").write_text(json.dumps({"size": 16, "mean": [0.5], "std": [0.5], "crop_pct": 1.0,
                                                   "interpolation": "bilinear", "in_chans": 1}))
    return f"torchscript:{path}"


def make_store(path, spec, n, labelled=True):
    """``n`` rows: features of small grey images written beside the store (paths readable on disk)."""
    from probe.models.registry import load_encoder
    from probe.targets import encode_images01

    enc = load_encoder(spec, device="cpu")
    rng = np.random.default_rng(0)
    img_dir = path.parent / f"{path.stem}_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths, images = [], []
    for i in range(n):
        arr = (rng.random((16, 16)) * 255).astype(np.uint8)
        p = img_dir / f"img{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
        images.append(torch.from_numpy(arr.astype(np.float32) / 255)[None])
    feats = encode_images01(enc, torch.stack(images)).numpy()
    with FeatureStore(path, "a") as st:
        g = st.create_group(group_key(spec, "embedding"), feats.shape[1], enc.record(), "embedding")
        g.append(feats, paths, [f"{i:064x}" for i in range(n)], labels=[i % 3 for i in range(n)] if labelled else None)
        if labelled:
            g._g.attrs["label_names"] = json.dumps(LABELS)
    return feats, paths


@pytest.fixture(scope="module")
def store(tmp_path_factory, enc_spec):
    path = tmp_path_factory.mktemp("store") / "feats.h5"
    feats, paths = make_store(path, enc_spec, 24)
    return path, feats, paths


def records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(path):
    return np.asarray(Image.open(path))


# -- interpolate -------------------------------------------------------------------------------------------
def test_interpolate_strip_shares_seeds_and_starts_at_a(run_cli, prior_dir, enc_spec, store, tmp_path):
    path, feats, paths = store
    out = tmp_path / "path"
    res = run_cli("-q", "interpolate", f"{path}:0", paths[5], "--points", "3", "--path", "slerp",
                  "--prior", prior_dir, "-m", enc_spec, *FAST, "--samples", "2", "--batch-size", "2",
                  "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    for name in ("strip.png", "distances.png", "path.json", "manifest.jsonl", "features.h5"):
        assert (out / name).is_file(), name
    recs = records(out)
    assert len(recs) == 6
    assert sorted({r["path_position"] for r in recs}) == [0.0, 0.5, 1.0]
    assert all(r["path_kind"] == "slerp" for r in recs)
    for s in (0, 1):  # sample s of every point has the same seed
        assert {r["seed"] for r in recs if r["sample"] == s} == {s}
    assert summary["positions"] == [0.0, 0.5, 1.0] and summary["path"] == "slerp"
    assert np.shape(summary["distance_to_a"]) == (2, 3) == np.shape(summary["distance_to_b"])
    # the image at t=0 was decoded towards A exactly: its distance to A is its best distance
    rec0 = next(r for r in recs if r["path_position"] == 0.0 and r["sample"] == 0)
    assert summary["distance_to_a"][0][0] == pytest.approx(rec0["best_distance"], rel=1e-4)
    assert json.loads((out / "path.json").read_text())["distance_a_b"] == pytest.approx(
        float(((feats[0] - feats[5]) ** 2).sum()), rel=1e-4)
    strip = Image.open(out / "strip.png")
    assert strip.width > strip.height  # 3 points (+ the A and B source images) across, 2 samples down

    # same seeds => the t=0 images are those of decoding A alone (a TorchScript encoder is confirmed with -m:
    # a store never chooses code to run, issue 22)
    alone = tmp_path / "alone"
    res = run_cli("-q", "decode", "--prior", prior_dir, "--from", path, "--index", "0", "-m", enc_spec, *FAST,
                  "--samples", "2", "--batch-size", "2", "--out", alone)
    assert res.exit_code == 0, res.stderr
    for s in (0, 1):
        first = next(r for r in recs if r["path_position"] == 0.0 and r["sample"] == s)
        assert np.array_equal(pixels(out / first["image"]), pixels(alone / "images" / f"r00000_s{s:02d}.png"))


def test_interpolate_encoder_defaults_to_the_store_and_vector_endpoints(run_cli, prior_dir, store, tmp_path,
                                                                        enc_spec):
    path, feats, _ = store
    np.save(tmp_path / "two.npy", feats[[3, 4]])
    out = tmp_path / "o"
    args = ["-q", "interpolate", f"{path}:1", f"vector:{tmp_path / 'two.npy'}:1", "--points", "2",
            "--prior", prior_dir, *FAST, "--no-baseline", "--out", out]
    res = run_cli(*args)  # the store names a TorchScript file: code, so it is never loaded unconfirmed
    assert res.exit_code == 2 and f"pass -m {enc_spec}" in res.stderr, res.stderr
    res = run_cli(*args, "-m", enc_spec)
    assert res.exit_code == 0, res.stderr
    recs = records(out)
    assert [r["target_id"] for r in recs] == ["p00", "p01"]
    assert recs[0]["encoder"].startswith("torchscript:")


def test_interpolate_data_path_walks_through_the_set(run_cli, prior_dir, enc_spec, store, tmp_path):
    path, feats, paths = store
    out = tmp_path / "data"
    res = run_cli("-q", "interpolate", f"{path}:0", f"{path}:5", "--points", "4", "--path", "data",
                  "--neighbours", "3", "--prior", prior_dir, "-m", enc_spec, *FAST, "--no-baseline", "--out", out,
                  "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    info = summary["data_path"]
    assert summary["path"] == "data" and info["neighbours"] == 3 and info["rows_used"] == len(feats)
    assert info["visited_rows"] and 0 not in info["visited_rows"] and 5 not in info["visited_rows"]
    assert info["visited_images"] == [paths[r] for r in info["visited_rows"]]
    recs = records(out)
    assert len(recs) == 4 and [r["path_kind"] for r in recs] == ["data"] * 4
    # the same path as the geometry computes from the set (the points between its visited rows)
    from probe.geometry.paths import data_path

    _, visited = data_path(feats[0], feats[5], feats, 4, neighbours=3)
    assert [int(r) for r in visited] == info["visited_rows"]
    # errors: a data path needs a set; --from only applies to it
    np.save(tmp_path / "v.npy", feats[:2])
    args = ["--prior", prior_dir, "-m", enc_spec, *FAST, "--out", tmp_path / "o"]
    res = run_cli("interpolate", f"vector:{tmp_path / 'v.npy'}:0", f"vector:{tmp_path / 'v.npy'}:1", "--path",
                  "data", *args)
    assert res.exit_code == 2 and "--from" in res.stderr
    res = run_cli("interpolate", f"{path}:0", f"{path}:5", "--from", path, *args)
    assert res.exit_code == 2 and "--from applies to --path data" in res.stderr


def test_interpolate_errors(run_cli, prior_dir, enc_spec, store, tmp_path):
    path, _, paths = store
    np.save(tmp_path / "short.npy", np.zeros(5, dtype=np.float32))
    args = ["--prior", prior_dir, "-m", enc_spec, *FAST, "--out", tmp_path / "o"]
    res = run_cli("interpolate", f"{path}:0", f"vector:{tmp_path / 'short.npy'}", *args)
    assert res.exit_code == 2 and "5 dimensions" in res.stderr and "128" in res.stderr
    res = run_cli("interpolate", f"{path}:0", str(tmp_path / "missing.png"), *args)
    assert res.exit_code == 2 and "missing.png" in res.stderr
    res = run_cli("interpolate", f"{path}:0", f"{path}:0:3", *args)
    assert res.exit_code == 2 and "one row" in res.stderr
    res = run_cli("interpolate", str(path), paths[0], *args)
    assert res.exit_code == 2 and "name the row" in res.stderr
    res = run_cli("interpolate", f"{path}:0", paths[0], "--points", "1", *args)
    assert res.exit_code == 2 and "--points" in res.stderr
    res = run_cli("interpolate", f"{path}:0", "text:a shoe", *args)
    assert res.exit_code == 2 and "not a CLIP model" in res.stderr
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_path_targets_reject_incompatible_endpoints():
    from probe.errors import UsageError
    from probe.targets import vector_target
    from probe.workflows.walks.pipeline import path_targets

    a = vector_target(np.ones(4), "a", "a.npy", 4)
    b = vector_target(np.ones(6), "b", "b.npy", 6)
    with pytest.raises(UsageError, match="4 dims but B .* 6"):
        path_targets(a, b, 3, "linear")


# -- perturb -----------------------------------------------------------------------------------------------
def test_perturb_pca_grid_manifest_and_cache(run_cli, prior_dir, store, tmp_path, enc_spec):
    import shutil

    src, feats, _ = store
    path = tmp_path / "copy.h5"
    shutil.copy(src, path)  # the run writes the PCA cache into the store
    out = tmp_path / "pca"
    args = ["--prior", prior_dir, "-m", enc_spec, *FAST, "--no-baseline"]
    res = run_cli("-q", "perturb", f"{path}:2", "--from", path, "--components", "1-2", "--scales", "-1,0,1.5",
                  *args, "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["cached_fit"] is False and len(summary["cells"]) == 6
    assert (out / "grid.png").is_file() and (out / "perturb.json").is_file()
    recs = records(out)
    assert [(r["direction"], r["scale"]) for r in recs] == [
        ("PC1", -1.0), ("PC1", 0.0), ("PC1", 1.5), ("PC2", -1.0), ("PC2", 0.0), ("PC2", 1.5)]
    evr = [r["explained_variance_ratio"] for r in recs]
    assert all(0 < v < 1 for v in evr) and evr[0] >= evr[3]
    assert recs[0]["direction_info"]["std"] > 0 and recs[0]["base"]["index"] == 2
    assert {r["seed"] for r in recs} == {0}
    with FeatureStore(path) as st:
        assert st.load_artifact(group_key(enc_spec, "embedding"), "pca") is not None
    # the scale-0 column decodes the base itself: same image as scale 0 of the other direction
    zero = [r for r in recs if r["scale"] == 0.0]
    assert np.array_equal(pixels(out / zero[0]["image"]), pixels(out / zero[1]["image"]))
    d_base = [c["distance_to_base"] for c in summary["cells"] if c["scale"] == 0.0]
    assert d_base[0] == pytest.approx(zero[0]["best_distance"], rel=1e-4)

    res = run_cli("-q", "perturb", "mean", "--from", path, "--components", "1", "--scales", "0", *args,
                  "--out", tmp_path / "again", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["cached_fit"] is True
    res = run_cli("-q", "perturb", "medoid", "--from", path, "--components", "1", "--scales", "0", *args,
                  "--out", tmp_path / "medoid")
    assert res.exit_code == 0, res.stderr
    base = records(tmp_path / "medoid")[0]["base"]
    assert base["kind"] == "medoid" and base["index"] is not None and base["image_path"]


def test_perturb_targets_scale_zero_is_the_base(store):
    from probe.geometry.directions import random_directions
    from probe.targets import vector_target
    from probe.workflows.walks.pipeline import perturb_targets

    _, feats, _ = store
    base = vector_target(feats[0], "b", "x", feats.shape[1])
    dirs = random_directions(feats.shape[1], 3, seed=1, features=feats)
    targets = perturb_targets(base, dirs, [-2.0, 0.0, 2.0])
    assert len(targets) == 9 and [t.id for t in targets[:3]] == ["d00-s00", "d00-s01", "d00-s02"]
    for k in range(3):
        assert np.array_equal(targets[3 * k + 1].vector, feats[0])
        step = targets[3 * k + 2].vector - feats[0]
        assert np.linalg.norm(step) == pytest.approx(2 * dirs.std[k], rel=1e-4)
        assert targets[3 * k].extra["direction"] == f"rand{k + 1}" and targets[3 * k].extra["scale"] == -2.0


def test_perturb_centres_mean_and_medoid(store):
    from probe.workflows.walks.perturb import set_centre
    from probe.workflows.walks.pipeline import open_feature_set

    path, feats, paths = store
    with open_feature_set(path) as fs:
        mean, medoid = set_centre(fs, "mean"), set_centre(fs, "medoid")
    assert np.allclose(mean.vector, feats.mean(0), atol=1e-5)
    nearest = int(np.argmin(np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1)).sum(1)))
    # the medoid is a real row (least summed distance to the others): its own feature, index and image
    assert medoid.index == nearest and np.array_equal(medoid.vector, feats[nearest])
    assert medoid.image_path == paths[nearest] and medoid.kind == "medoid"


def test_perturb_class_directions(run_cli, prior_dir, store, tmp_path, enc_spec):
    path, _, _ = store
    out = tmp_path / "cls"
    res = run_cli("-q", "perturb", f"{path}:0", "--from", path, "--directions", "class", "--pairs", "shirt>shoe",
                  "--scales", "1", "--prior", prior_dir, "-m", enc_spec, *FAST, "--no-baseline", "--out", out)
    assert res.exit_code == 0, res.stderr
    (rec,) = records(out)
    assert rec["direction"] == "shirt→shoe" and rec["direction_info"]["class_pair"] == [0, 2]


def test_perturb_errors(run_cli, prior_dir, enc_spec, tmp_path):
    few = tmp_path / "few.h5"
    make_store(few, enc_spec, 3, labelled=False)
    args = ["--prior", prior_dir, "-m", enc_spec, *FAST, "--out", tmp_path / "o"]
    res = run_cli("perturb", f"{few}:0", "--from", few, "--components", "1-5", *args)
    assert res.exit_code == 2 and "3 row(s)" in res.stderr and "at least 6 rows" in res.stderr
    res = run_cli("perturb", f"{few}:0", "--from", few, "--directions", "class", *args)
    assert res.exit_code == 2 and "no labels" in res.stderr
    res = run_cli("perturb", f"{few}:0", "--from", few, "--directions", "sideways", *args)
    assert res.exit_code == 2 and "--directions" in res.stderr
    res = run_cli("perturb", f"{few}:0", "--from", few, "--scales", "a,b", *args)
    assert res.exit_code == 2 and "--scales" in res.stderr
    res = run_cli("perturb", f"{few}:0", "--from", few, "-m", "timm:test_resnet", "--weights", "random",
                  "--directions", "random", *[a for a in args if a not in ("-m", enc_spec)])
    assert res.exit_code == 2 and "torchscript:" in res.stderr


def test_parse_pairs():
    from probe.errors import UsageError
    from probe.workflows.walks.pipeline import parse_pairs

    assert parse_pairs("0-2,1-0", LABELS) == [(0, 2), (1, 0)]
    assert parse_pairs("trouser>shirt", LABELS) == [(1, 0)]
    with pytest.raises(UsageError, match="unknown class"):
        parse_pairs("hat>shoe", LABELS)
    with pytest.raises(UsageError, match="FROM-TO"):
        parse_pairs("3", LABELS)


# -- map ---------------------------------------------------------------------------------------------------
def test_map_pca_grid_overlay_and_cache(run_cli, prior_dir, store, tmp_path, enc_spec):
    import shutil

    src, _, _ = store
    path = tmp_path / "copy.h5"
    shutil.copy(src, path)
    out = tmp_path / "map"
    res = run_cli("-q", "map", path, "--method", "pca", "--grid", "2x3", "--prior", prior_dir, "-m", enc_spec, *FAST,
                  "--no-baseline", "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["cached"] is False and summary["rows"] == 24 and summary["grid"] == [2, 3]
    for name in ("map.png", "map.json", "map.npz", "grid.png", "manifest.jsonl", "features.h5"):
        assert (out / name).is_file(), name
    recs = records(out)
    assert [(r["grid_row"], r["grid_col"]) for r in recs] == [(r, c) for r in range(2) for c in range(3)]
    assert recs[0]["map_y"] > recs[3]["map_y"]  # row 0 is the top of the map

    again = tmp_path / "map2"
    res = run_cli("-q", "map", path, "--method", "pca", "--overlay", out, "--thumbnails", "4", "--out", again,
                  "--json")
    assert res.exit_code == 0, res.stderr
    second = json.loads(res.stdout)
    assert second["cached"] is True and second["thumbnails"] == 4
    assert np.array_equal(np.load(out / "map.npz")["points"], np.load(again / "map.npz")["points"])
    assert (again / "map.png").is_file() and not (again / "manifest.jsonl").exists()

    res = run_cli("-q", "map", path, "--method", "pca", "--max-rows", "10", "--out", tmp_path / "sub", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["rows"] == 10


def test_map_errors(run_cli, enc_spec, store, tmp_path):
    path, _, _ = store
    res = run_cli("map", path, "--method", "pca", "--grid", "3by3", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--grid" in res.stderr and "ROWSxCOLS" in res.stderr
    tiny = tmp_path / "tiny.h5"
    make_store(tiny, enc_spec, 2)
    res = run_cli("map", tiny, "--method", "pca", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "2 row(s)" in res.stderr and "at least 3" in res.stderr
    res = run_cli("map", tiny, "--method", "umap", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "UMAP" in res.stderr
    res = run_cli("map", tmp_path / "none.h5", "--out", tmp_path / "o")
    assert res.exit_code == 3 and "not found" in res.stderr
    res = run_cli("map", path, "--method", "pca", "--overlay", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 3 and "not a decode output" in res.stderr
