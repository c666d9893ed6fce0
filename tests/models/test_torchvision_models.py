"""The ``torchvision:`` family (the paper's ResNet-50 and ViT-H/14 by weights name, random init here),
``hf-hub:`` specs of timm and open_clip, and offline hub failures as one line with exit status 3."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch

from probe.errors import InputError, UsageError
from probe.models import hub
from probe.models.registry import load_encoder, parse_spec
from probe.models.torchvision_models import (
    TorchvisionSpec,
    build_torchvision,
    parse_torchvision,
    resolve_weights,
    torchvision_preprocess,
)


def test_paper_specs_parse_and_carry_their_weights_preprocessing():
    assert parse_spec("torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1").family == "torchvision"
    vit = torchvision_preprocess(resolve_weights(parse_torchvision("vit_h_14/IMAGENET1K_SWAG_E2E_V1")))
    assert (vit.size, vit.resize_size, vit.interpolation) == (518, 518, "bicubic")
    assert vit.mean == pytest.approx((0.485, 0.456, 0.406)) and vit.std == pytest.approx((0.229, 0.224, 0.225))
    rn = torchvision_preprocess(resolve_weights(parse_torchvision("resnet50/IMAGENET1K_V1")))
    assert (rn.size, rn.resize_size, rn.interpolation) == (224, 256, "bilinear")
    # the eval transform: shorter side to 256, centre crop 224
    x = torch.rand(1, 3, 300, 400)
    assert rn.resize(x).shape == (1, 3, 224, 224)


def test_vit_h_14_swag_architecture_takes_518_px():
    """Built on the meta device (no memory, no init): the weights name fixes the ViT's input size."""
    with torch.device("meta"):
        model, weights = build_torchvision(TorchvisionSpec("vit_h_14", "IMAGENET1K_SWAG_E2E_V1"), pretrained=False)
    assert model.image_size == 518 and model.hidden_dim == 1280 and weights.name == "IMAGENET1K_SWAG_E2E_V1"


def test_bad_torchvision_specs_are_usage_errors():
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        load_encoder("torchvision:resnet50/IMAGENET9K", weights="random", device="cpu")
    with pytest.raises(UsageError, match="no classification model"):
        load_encoder("torchvision:resnet5000/IMAGENET1K_V1", weights="random", device="cpu")
    with pytest.raises(UsageError, match="needs a weights name"):
        load_encoder("torchvision:resnet50", device="cpu")


@pytest.fixture(scope="module")
def resnet18():
    return load_encoder("torchvision:resnet18/IMAGENET1K_V1", layers=["embedding", "layer3", "logits"],
                        weights="random", device="cpu")


def test_random_resnet18_reads_embedding_layers_and_logits(resnet18):
    feats = resnet18.features(torch.rand(2, 3, 64, 80))
    assert feats["embedding"].shape == (2, 512) and feats["layer3"].shape == (2, 256)
    assert feats["logits"].shape == (2, 1000) and len(resnet18.class_names) == 1000
    # the embedding is the classifier's input: fc(embedding) = logits
    fc = resnet18.model.fc
    assert torch.allclose(fc(feats["embedding"]), feats["logits"], atol=1e-5)
    again = load_encoder("torchvision:resnet18/IMAGENET1K_V1", weights="random", device="cpu")
    assert torch.equal(again.model.fc.weight, fc.weight)  # --weights random is the same network every time


def test_random_vit_b_16_embedding():
    enc = load_encoder("torchvision:vit_b_16/IMAGENET1K_V1", weights="random", device="cpu")
    assert enc.input_size == 224
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 768)


def test_torchvision_download_failure_is_one_line_exit_3(monkeypatch, run_cli):
    import torchvision.models._api as tv_api

    def offline(*_a, **_k):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)  # torch.hub's downloader
    with pytest.raises(InputError, match="download.pytorch.org") as err:
        load_encoder("torchvision:resnet50/IMAGENET1K_V1", device="cpu")
    assert "\n" not in str(err.value) and "--weights random" in str(err.value)
    res = run_cli("models", "layers", "torchvision:resnet50/IMAGENET1K_V1")
    assert res.exit_code == 3 and len(res.stderr.strip().splitlines()) == 1


def test_timm_hf_hub_spec_reaches_the_hub_loader(monkeypatch):
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fake(name, pretrained):
        calls.append((name, pretrained))
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(timm, "create_model", fake)
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: True)
    with pytest.raises(InputError, match="timm:hf-hub:someorg/some-model") as err:
        load_encoder("timm:hf-hub:someorg/some-model", device="cpu")
    assert calls == [("hf-hub:someorg/some-model", True)] and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="ORG/NAME"):
        load_encoder("timm:hf-hub:noslash", device="cpu")


def test_open_clip_hf_hub_spec_is_one_model_id(monkeypatch):
    import open_clip
    from huggingface_hub.errors import OfflineModeIsEnabled

    calls = []

    def fake(arch, pretrained=None):
        calls.append((arch, pretrained))
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/...: offline mode is enabled.")

    monkeypatch.setattr(open_clip, "create_model", fake)
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: True)  # no network probe in tests
    with pytest.raises(InputError, match="open_clip:hf-hub:laion/CLIP-ViT-B-32"):
        load_encoder("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", device="cpu")
    assert calls == [("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)]


def test_unreachable_hub_switches_to_the_cache_without_retries(monkeypatch, run_cli):
    """A real hub loader (no mock of the download): the host is unreachable, so offline mode is used for
    the call and restored after; the failure is one line, exit 3."""
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(InputError, match="local cache"):
        load_encoder("timm:hf-hub:probe-tests/no-such-model", device="cpu")
    assert constants.HF_HUB_OFFLINE is False
    res = run_cli("models", "layers", "timm:hf-hub:probe-tests/no-such-model")
    assert res.exit_code == 3 and len(res.stderr.strip().splitlines()) == 1
    assert "Retrying" not in res.stderr


def test_paper_recipes_name_the_papers_networks_and_taus():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes" / "paper"
    found = {}
    for name in ("clip_rn50.sh", "resnet50.sh", "vit_h14.sh"):
        m = re.search(r"^NETWORK=(\S+) TAU=(\S+)", (root / name).read_text(), re.M)
        found[name] = (m.group(1), float(m.group(2)))
    assert found == {"clip_rn50.sh": ("open_clip:RN50/openai", 3.0),
                     "resnet50.sh": ("torchvision:resnet50/IMAGENET1K_V1", 3.0),
                     "vit_h14.sh": ("torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1", 2.0)}
    for spec, _tau in found.values():
        if spec.startswith("torchvision:"):
            resolve_weights(parse_torchvision(parse_spec(spec).name))


# the two download paths (Hugging Face hub for open_clip and SD, torch.hub for torchvision); vit_h14.sh
# takes the same path as resnet50.sh
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["clip_rn50.sh", "resnet50.sh"])
def test_paper_recipes_offline_fail_in_one_line_exit_3(recipe, tmp_path, photos):
    """The recipes for users with hub access, run with every download blocked: one line, exit 3."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dead = "http://127.0.0.1:9"  # nothing listens: every download is refused at once
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": dead, "https_proxy": dead, "HTTP_PROXY": dead,
           "http_proxy": dead, "NO_PROXY": "", "no_proxy": "", "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(root), "OUT": str(tmp_path / "out"),
           "PROBE": f"{sys.executable} -m probe"}
    res = subprocess.run(["bash", str(root / "recipes" / "paper" / recipe), str(photos["chelsea"])], env=env,
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 3, res.stderr
    assert len(lines) == 1 and "--weights random" in lines[0], res.stderr
