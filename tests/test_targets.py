"""Resolving decode targets (store rows, images, prompts, vector files) and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probe.errors import InputError, UsageError
from probe.store import FeatureStore, group_key
from probe.targets import (
    encode_images01,
    feature_dim,
    parse_indices,
    resolve_targets,
    vector_target,
)
from tests.tiny_diffusion import tiny_encoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


def make_store(path, encoder, n=6, spec=None, layer="embedding"):
    dim = feature_dim(encoder)
    feats = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    record = encoder.record()
    if spec:
        record["model_spec"] = spec
    with FeatureStore(path, "a") as st:
        g = st.create_group(group_key(record["model_spec"], layer), dim, record, layer)
        g.append(feats, [f"/data/img{i}.png" for i in range(n)], [f"{i:064x}" for i in range(n)],
                 labels=[i % 2 for i in range(n)])
    return feats


def test_parse_indices():
    assert parse_indices("3", 10) == [3]
    assert parse_indices("-1", 10) == [9]
    assert parse_indices("0:4", 10) == [0, 1, 2, 3]
    assert parse_indices("3,5,7", 10) == [3, 5, 7]
    assert parse_indices("0:4:2,9", 10) == [0, 2, 9]
    with pytest.raises(UsageError, match="10 rows"):
        parse_indices("12", 10)
    with pytest.raises(UsageError, match="10 rows"):
        parse_indices("0:16", 10)
    with pytest.raises(UsageError, match="cannot read"):
        parse_indices("a", 10)


def test_store_rows(tmp_path, encoder):
    feats = make_store(tmp_path / "f.h5", encoder)
    ts = resolve_targets(encoder, store=tmp_path / "f.h5", index="1:3", paths=["/data/img5.png"])
    assert [t.index for t in ts] == [1, 2, 5]
    assert [t.id for t in ts] == ["r00001", "r00002", "r00005"]
    assert np.array_equal(ts[0].vector, feats[1]) and ts[0].vector.dtype == np.float32
    assert ts[0].kind == "hdf5" and ts[0].label == 1 and ts[0].image_path == "/data/img1.png"
    with pytest.raises(UsageError, match="6 rows"):
        resolve_targets(encoder, store=tmp_path / "f.h5", index="6")
    with pytest.raises(UsageError, match="--from"):
        resolve_targets(encoder, index="1")


def test_store_group_of_another_model_or_layer(tmp_path, encoder):
    make_store(tmp_path / "other.h5", encoder, spec="timm:resnet18")
    with pytest.raises(UsageError, match="timm:resnet18"):
        resolve_targets(encoder, store=tmp_path / "other.h5", index="0")
    make_store(tmp_path / "layer.h5", encoder, layer="body.0")
    with pytest.raises(UsageError, match="body.0"):
        resolve_targets(encoder, store=tmp_path / "layer.h5", index="0")
    with pytest.raises(InputError, match="not found"):
        resolve_targets(encoder, store=tmp_path / "missing.h5", index="0")


def test_image_target_matches_encoder(tmp_path, encoder):
    arr = (np.random.default_rng(1).random((20, 24)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "shoe.png")
    (t,) = resolve_targets(encoder, images=[tmp_path / "shoe.png"])
    expected = encode_images01(encoder, torch.from_numpy(arr).float()[None, None] / 255)[0].numpy()
    assert t.kind == "image" and t.id == "img-shoe" and np.allclose(t.vector, expected)
    with pytest.raises(InputError, match="nope.png"):
        resolve_targets(encoder, images=[tmp_path / "nope.png"])


def test_text_needs_clip(encoder):
    with pytest.raises(UsageError, match="not a CLIP model"):
        resolve_targets(encoder, texts=["a dog"])


def test_vector_files(tmp_path, encoder):
    dim = feature_dim(encoder)
    np.save(tmp_path / "v.npy", np.ones(dim, dtype=np.float32))
    np.save(tmp_path / "m.npy", np.zeros((3, dim), dtype=np.float32))
    np.savetxt(tmp_path / "v.txt", np.arange(dim)[None], delimiter=",")
    ts = resolve_targets(encoder, vectors=[tmp_path / "v.npy", tmp_path / "m.npy", tmp_path / "v.txt"])
    assert [t.id for t in ts] == ["vec-v", "vec-m-0", "vec-m-1", "vec-m-2", "vec-v-2"]
    assert np.array_equal(ts[-1].vector, np.arange(dim, dtype=np.float32))
    np.save(tmp_path / "short.npy", np.ones(5, dtype=np.float32))
    with pytest.raises(UsageError, match=rf"short.npy.*5 dimensions.*{dim}"):
        resolve_targets(encoder, vectors=[tmp_path / "short.npy"])
    bad = np.ones(dim, dtype=np.float32)
    bad[3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="nan.npy.*NaN"):
        resolve_targets(encoder, vectors=[tmp_path / "nan.npy"])
    (tmp_path / "junk.txt").write_text("1 2 x\n")
    with pytest.raises(InputError, match="junk.txt"):
        resolve_targets(encoder, vectors=[tmp_path / "junk.txt"])
    with pytest.raises(UsageError, match="nothing to decode"):
        resolve_targets(encoder)
    t = vector_target(np.zeros(dim), "path a→b t=0.5", "interpolate", dim, path_position=0.5)
    assert t.extra == {"path_position": 0.5} and "/" not in t.id
