"""The Python API (``import probe``): model objects and tensors in, typed results out, the CLI's files on request.

Tiny stand-ins only (a random 16-px DDPM prior, a random conv net passed as a plain nn.Module), so every
call is a few sampler steps on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import probe
from probe.errors import InputError, UsageError
from probe.store import FeatureStore, group_key
from tests.tiny_diffusion import TinyConvNet, tiny_pixel_prior

torch.set_num_threads(1)

FAST = {"schedule": "fast", "steps": 3, "rounds": 1, "early_steps": 0, "baseline": False}
PRE = {"size": 16, "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def prior():
    return tiny_pixel_prior()


@pytest.fixture(scope="module")
def enc():
    return probe.load_encoder(TinyConvNet(1), preprocess=PRE, device="cpu", name="test:conv")


@pytest.fixture(scope="module")
def store(tmp_path_factory, enc):
    """24 labelled rows of the encoder's features (images written beside the store)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.random((24, 1, 16, 16)).astype(np.float32))
    paths = []
    for i, x in enumerate(imgs):
        p = root / f"img{i:02d}.png"
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(p)
        paths.append(str(p))
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32) / 255)[None] for p in paths])
    feats = enc.features(imgs)["embedding"].numpy()
    path = root / "feats.h5"
    with FeatureStore(path, "a") as st:
        g = st.create_group(group_key(enc.spec, "embedding"), feats.shape[1], enc.record(), "embedding")
        g.append(feats, paths, [f"{i:064x}" for i in range(24)], labels=[i % 3 for i in range(24)])
    return path, feats, imgs


def test_import_is_lazy_and_exports_the_api():
    code = "import sys, probe; assert 'torch' not in sys.modules; print(sorted(probe.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("load_encoder", "load_prior", "extract", "decode", "interpolate", "perturb", "map", "compare"):
        assert name in out
    with pytest.raises(AttributeError):
        probe.no_such_thing  # noqa: B018


def test_load_encoder_from_a_module(enc):
    assert enc.spec == "test:conv" and enc.feature_dims == {"embedding": 128} and enc.feature_dim == 128
    layered = probe.load_encoder(TinyConvNet(1), preprocess=probe.Preprocess(16, (0.5,), (0.5,), in_chans=1),
                                 layers=["body.0", "embedding"], device="cpu")
    assert layered.spec == "module:TinyConvNet" and layered.feature_dims == {"body.0": 8, "embedding": 128}
    with pytest.raises(UsageError, match="give preprocess="):
        probe.load_encoder(TinyConvNet(1))
    with pytest.raises(UsageError, match="unknown field"):
        probe.load_encoder(TinyConvNet(1), preprocess={**PRE, "colour": 1})


@pytest.mark.slow
def test_decode_returns_images_distances_and_records(enc, prior, store):
    _, feats, imgs = store
    res = probe.decode(enc, feats[:2], prior=prior, samples=2, **FAST)
    assert res.out is None and res.images.shape == (4, 1, 16, 16)
    assert 0 <= float(res.images.min()) and float(res.images.max()) <= 1
    assert [(r.target_id, r.sample) for r in res.records] == [("vec-0", 0), ("vec-0", 1), ("vec-1", 0), ("vec-1", 1)]
    # the distance recorded is the one the returned (saved, 8-bit) image gives
    again = ((enc.features(res.images)["embedding"].numpy() - np.repeat(feats[:2], 2, 0)) ** 2).sum(1)
    np.testing.assert_allclose(res.distances.numpy(), again, rtol=1e-4)
    assert res.of_target("vec-1").shape == (2, 1, 16, 16)
    # an image tensor is a target too (encoded now)
    assert probe.decode(enc, imgs[0], prior=prior, samples=1, **FAST).records[0].target["kind"] == "image"


def test_decode_takes_the_cli_targets_as_one_value(enc, prior, store):
    path, feats, _ = store
    res = probe.decode(enc, [probe.Targets(store=path, index=[0, 2]), feats[1]], prior=prior, samples=1, **FAST)
    assert [(t.id, t.kind) for t in res.targets] == [("r00000", "hdf5"), ("r00002", "hdf5"), ("vec", "vector")]
    assert res.has_report and not res.awaits_merge and res.plan.shard.single and res.plan.speaks
    np.testing.assert_array_equal(res.targets[1].vector, feats[2])
    with pytest.raises(UsageError, match="nothing to decode"):
        probe.decode(enc, probe.Targets(), prior=prior)
    assert probe.Targets(texts="a red shoe").texts == ("a red shoe",)


def test_decode_options_are_checked(enc, prior, store, tmp_path):
    _, feats, _ = store
    with pytest.raises(UsageError, match="unknown decode option.*colour"):
        probe.decode(enc, feats[0], prior=prior, colour=3)
    with pytest.raises(UsageError, match="unknown schedule"):
        probe.decode(enc, feats[0], prior=prior, schedule="fastest")
    opts = probe.DecodeOptions.build(samples=3, patience=2)
    assert opts.samples == 3 and {c.stop_patience for c in opts.config().choices} == {2}
    with pytest.raises(Exception):  # noqa: B017 - frozen all the way down
        opts.overrides["weight"] = 1.0
    with pytest.raises(Exception):  # noqa: B017
        opts.samples = 1


def test_decode_writes_the_cli_directory(enc, prior, store, tmp_path):
    _, feats, _ = store
    res = probe.decode(enc, feats[0], prior=prior, samples=1, out=tmp_path / "d", **{**FAST, "baseline": True})
    names = {p.name for p in (tmp_path / "d").iterdir()}
    assert {"images", "final", "baseline", "manifest.jsonl", "features.h5", "contact_sheet.png"} <= names
    assert [r.to_dict() for r in probe.Manifest.read(tmp_path / "d")] == [r.to_dict() for r in res.records]
    assert res.records[0].relative_distance is not None


@pytest.mark.slow
def test_walks_through_the_api(enc, prior, store, tmp_path):
    path, feats, _ = store
    walk = probe.interpolate(enc, feats[0], feats[1], points=3, prior=prior, out=tmp_path / "i", **FAST)
    assert walk.positions == [0.0, 0.5, 1.0] and walk.decode.images.shape == (3, 1, 16, 16)
    assert (tmp_path / "i" / "strip.png").is_file() and len(walk.report.distance_to_a[0]) == 3
    from_store = probe.interpolate(enc, f"{path}:0", f"{path}:1", points=2, prior=prior, **FAST)
    assert [t.index for t in (from_store.a, from_store.b)] == [0, 1]

    pert = probe.perturb(enc, "mean", path, components="1-2", scales=[-1, 0, 1], prior=prior, **FAST)
    assert [t.id for t in pert.targets][:3] == ["d00-s00", "d00-s01", "d00-s02"] and len(pert.decode) == 6
    assert pert.summary["source"] == "pca"

    m = probe.map(path, method="pca", grid="2x2", encoder=enc, prior=prior, out=tmp_path / "m", **FAST)
    assert m.points.shape == (24, 2) and list(m.labels[:3]) == [0, 1, 2] and len(m.decode) == 4
    assert json.loads((tmp_path / "m" / "map.json").read_text())["grid"] == [2, 2]
    no_grid = probe.map(path, method="pca")
    assert no_grid.decode is None and np.allclose(no_grid.points, m.points)


@pytest.mark.slow
def test_compare_takes_a_decode_result(enc, prior, store, tmp_path):
    _, feats, _ = store
    res = probe.decode(enc, feats[:2], prior=prior, samples=2, out=tmp_path / "c", **{**FAST, "baseline": True})
    result = probe.compare(res, attributes=["brightness"], classifiers=["none"], n_boot=10)
    assert [s.name for s in result.summaries] == ["brightness"] and len(result.targets) == 2
    with pytest.raises(UsageError, match="out=FOLDER"):
        probe.compare(probe.decode(enc, feats[0], prior=prior, samples=2, **FAST))
    import probe.persistence.scoring as module  # the scoring module is a module; probe.compare stays the function

    assert callable(probe.compare) and probe.compare is not module and module.dispersion is not None


def test_extract_hands_back_features(enc, store, tmp_path):
    path, feats, imgs = store
    with FeatureStore(path) as st:
        files = st.group().paths[:3]
    res = probe.extract(enc, files)
    assert res.store is None and res.summaries[0].stored == 3
    np.testing.assert_allclose(res.features["embedding"], feats[:3], atol=1e-5)
    direct = probe.extract(enc, imgs[:2])
    np.testing.assert_allclose(direct.features["embedding"], feats[:2], atol=1e-5)
    kept = probe.extract(enc, files, out=tmp_path / "x.h5")
    assert kept.store == tmp_path / "x.h5" and kept.features == {}
    with FeatureStore(tmp_path / "x.h5") as st:
        assert len(st.group()) == 3


def test_extract_failures_come_back_typed(enc, tmp_path):
    from probe.workflows.extract import NothingExtracted

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(NothingExtracted, match="nothing extracted: all 1 inputs failed") as err:
        probe.extract(enc, [bad], workers=0)
    assert err.value.exit_code == 3 and [p for p, _ in err.value.result.summaries[0].failed] == [str(bad)]
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not a UTF-8 text file of prompts"):
        probe.extract(enc, text_file=latin1)
    with pytest.raises(UsageError, match="give images"):
        probe.extract(enc, texts=["  "])
