"""A module encoder's "embedding" follows one rule whatever ``preprocess=`` is passed (issue 22).

A timm model gives its pre-logits with or without a preprocessing config; a torchvision classifier module
gives the input of its final Linear layer, like the ``torchvision:`` spec; other modules give their output.
The encoder's record says which tensor it is.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probe
from probe.models.modules import EMBED_CLASSIFIER_INPUT, EMBED_OUTPUT, EMBED_TIMM, EMBED_USER


def _timm():
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet10t", pretrained=False, num_classes=7)


def _tv():
    tvm = pytest.importorskip("torchvision.models")
    return tvm.resnet18(weights=None, num_classes=7)


def _plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))


TINY = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _timm_config(m):
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=m)
    cfg["input_size"] = (3, 32, 32)
    return cfg


# (model factory, preprocess given, embedding dim expected, rule recorded)
CASES = [
    ("timm, no preprocess", _timm, lambda m: None, 512, EMBED_TIMM),
    ("timm, timm data config", _timm, _timm_config, 512, EMBED_TIMM),
    ("timm, dict", _timm, lambda m: TINY, 512, EMBED_TIMM),
    ("torchvision resnet18 module", _tv, lambda m: TINY, 512, EMBED_CLASSIFIER_INPUT),
    ("plain Sequential", _plain, lambda m: TINY, 7, EMBED_OUTPUT),
]


@pytest.mark.parametrize("label,make,pre,dim,rule", CASES, ids=[c[0] for c in CASES])
def test_embedding_rule_does_not_depend_on_preprocess(label, make, pre, dim, rule):
    torch.manual_seed(0)
    m = make()
    enc = probe.load_encoder(m, preprocess=pre(m), device="cpu")
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 40, 40))
    assert out.shape == (2, dim), label
    assert enc.feature_dim == dim
    assert enc.record()["embedding"] == rule


def test_timm_preprocess_is_used_but_head_kept():
    m = _timm()
    enc = probe.load_encoder(m, preprocess=_timm_config(m), device="cpu")
    assert enc.input_size == 32
    with torch.no_grad():
        assert enc.classify(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_torchvision_module_matches_spec_embedding():
    """The module and the ``torchvision:`` spec read the same tensor (the classifier's input)."""
    m = _tv().eval()
    enc = probe.load_encoder(m, preprocess=TINY, device="cpu")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        emb = enc(x)
        feats = nn.Sequential(*list(m.children())[:-1])(enc.preprocess.normalize(enc.resize(x))).flatten(1)
        logits = enc.classify(x)
    assert torch.allclose(emb, feats, atol=1e-5)
    assert logits.shape == (1, 7)


def test_embed_function_wins_and_is_recorded():
    m = _plain()
    enc = probe.load_encoder(m, preprocess=TINY, embed=lambda mod, x: mod[:3](x), device="cpu")
    assert enc.feature_dim == 4
    assert enc.record()["embedding"] == EMBED_USER


def test_spec_records_are_unchanged():
    """Specs name their own rule; their record (and so caches keyed on it) gains no field."""
    pytest.importorskip("timm")
    enc = probe.load_encoder("timm:resnet10t", weights="random", device="cpu")
    assert "embedding" not in enc.record()
