"""Real architectures with random weights (nothing to download): open_clip RN50 and ViT-B-32 (image and
text towers), timm resnet50 and vit_base_patch16_224.

Checked: embedding and hooked-layer shapes, the documented pooling (4-D maps averaged over H and W,
token sequences -> class token or mean of patch tokens, --keep-spatial flattening) against the raw
module output captured by our own hook, text embeddings in the image embedding space, and that the
extraction path (PIL decode + torch resize in the reader, then ``forward_resized``) equals ``enc(x01)``.

Tolerances:
  * extract path vs ``enc(x01)``: 1e-5 relative to the feature scale (identical arithmetic; only the
    batch composition differs, which may reorder float sums in the convolutions);
  * probe's torch resize vs the libraries' own PIL eval transforms: cosine > 0.99. The pixels differ
    by PIL's uint8 rounding and bicubic kernel details (mean |diff| < 1% of the range), see
    test_registry.py for the same check on real weights, where it is discriminative. With random
    weights the check is weaker (random features of different photos are themselves fairly similar),
    so the pixel-level agreement is asserted too.

Models are built once per module and run on 1-2 small images, so the file stays within seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probe.images import read_image01
from probe.models.registry import load_encoder
from probe.store import FeatureStore
from probe.workflows.extract.pipeline import ExtractConfig, extract_images

CASES = {
    # spec: (hooked layer, embedding dim, layer dim, raw layer output kind)
    "open_clip:RN50": ("visual.layer4", 1024, 2048, "map"),
    "open_clip:ViT-B-32": ("visual.transformer.resblocks.11", 512, 768, "tokens"),
    "timm:resnet50": ("layer4", 2048, 2048, "map"),
    "timm:vit_base_patch16_224": ("blocks.11", 768, 768, "tokens"),
}


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {spec: load_encoder(spec, layers=["embedding", layer], weights="random", device="cpu")
            for spec, (layer, *_rest) in CASES.items()}


@pytest.fixture(scope="module")
def two_images(small_images):
    return small_images[:2]


class _Raw:
    """Our own forward hook on a module: the unpooled output of the last forward."""

    def __init__(self, module):
        self.out = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, _m, _i, out):
        self.out = out

    def close(self):
        self.handle.remove()


# which extra pooling settings each model is run with (one forward each; the machine is slow)
EXTRA = {"open_clip:RN50": ("spatial",), "open_clip:ViT-B-32": ("mean", "spatial"), "timm:resnet50": ("spatial",),
         "timm:vit_base_patch16_224": ("mean",)}


@pytest.mark.parametrize("spec", list(CASES))
def test_shapes_and_documented_pooling(encoders, spec, photos):
    enc = encoders[spec]
    layer, emb_dim, layer_dim, kind = CASES[spec]
    assert enc.layers == ["embedding", layer] and enc.record()["weights"] == "random"
    x01 = read_image01(photos["coffee"])[None]  # 400x600, resized to 224 inside
    raw = _Raw(dict(enc.model.named_modules())[layer])
    try:
        with torch.no_grad():
            feats = enc.features(x01)
            r = raw.out
            assert feats["embedding"].shape == (1, emb_dim)
            assert feats[layer].shape == (1, layer_dim)
            if kind == "map":
                assert r.dim() == 4 and r.shape[:2] == (1, layer_dim) and r.shape[2:] == (7, 7)
                torch.testing.assert_close(feats[layer], r.mean(dim=(2, 3)))
            else:
                assert r.dim() == 3 and r.shape[0] == 1 and r.shape[2] == layer_dim
                assert r.shape[1] == (50 if "B-32" in spec else 197)  # class token + patches
                torch.testing.assert_close(feats[layer], r[:, 0])  # default token_pool="cls"
            if "mean" in EXTRA[spec]:
                enc.token_pool = "mean"
                try:
                    mean = enc.features(x01)[layer]
                finally:
                    enc.token_pool = "cls"
                torch.testing.assert_close(mean, raw.out[:, 1:].mean(1))  # patch tokens only
                assert not torch.allclose(mean, r[:, 0])
            if "spatial" in EXTRA[spec]:
                enc.keep_spatial = True
                try:
                    spatial = enc.features(x01)
                finally:
                    enc.keep_spatial = False
                assert spatial[layer].shape == (1, r[0].numel())
                torch.testing.assert_close(spatial[layer], raw.out.flatten(1))
                assert spatial["embedding"].shape == (1, emb_dim)  # the embedding is already a vector
    finally:
        raw.close()


@pytest.mark.parametrize("spec", ["open_clip:RN50", "open_clip:ViT-B-32"])
def test_clip_text_tower_lands_in_image_space(encoders, spec):
    enc = encoders[spec]
    assert enc.has_text
    with torch.no_grad():
        text = enc.encode_text(["a photo of a cat", "a photo of a dog", "a diagram"])
    assert text.shape == (3, CASES[spec][1])  # = the image embedding's dim (checked above)
    assert torch.isfinite(text).all() and not torch.allclose(text[0], text[1])


@pytest.mark.parametrize("spec", ["timm:resnet50", "timm:vit_base_patch16_224"])
def test_timm_models_have_no_text_but_a_head(encoders, spec):
    enc = encoders[spec]
    assert not enc.has_text and len(enc.class_names) == 1000
    from probe.errors import UsageError

    with pytest.raises(UsageError, match="not a CLIP model"):
        enc.encode_text(["a cat"])


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["timm:resnet50", "open_clip:ViT-B-32"])
def test_extract_path_equals_encoder_on_the_file_tensor(encoders, spec, two_images, tmp_path):
    """What ``probe extract`` stores (reader: PIL decode + Preprocess.resize; main: forward_resized on a
    batch) equals ``enc(x01)`` on each file's own [0, 1] tensor."""
    enc = encoders[spec]
    layer = CASES[spec][0]
    store = tmp_path / "f.h5"
    summary = extract_images(enc, two_images, store, ExtractConfig(batch_size=2, workers=0))
    assert summary.stored == 2 and not summary.failed
    with torch.no_grad():  # enc(x01) is features(x01)[first layer]; all layers come from one forward
        singles = [enc.features(read_image01(p)[None]) for p in two_images]
    by_file = {name: torch.cat([f[name] for f in singles]) for name in enc.layers}
    with FeatureStore(store) as st:
        for name in enc.layers:
            g = st.group(f"{spec.replace(':', '_')}/{name}")
            assert g.paths == [str(p) for p in two_images]
            stored = torch.from_numpy(g.rows(slice(None)))
            direct = by_file[name]
            scale = direct.abs().max()
            torch.testing.assert_close(stored / scale, direct / scale, atol=1e-5, rtol=0)
    assert layer in enc.layers


def _pil_inputs(spec, enc, paths):
    """The library's own PIL eval transform for this model, normalised as the model expects."""
    from PIL import Image

    if spec.startswith("timm:"):
        from timm.data import create_transform, resolve_data_config

        tf = create_transform(**resolve_data_config({}, model=enc.model))
    else:
        import open_clip

        p = enc.preprocess
        tf = open_clip.image_transform(p.size, is_train=False, mean=p.mean, std=p.std)
    return torch.stack([tf(Image.open(path).convert("RGB")) for path in paths])


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["open_clip:RN50", "timm:resnet50"])
def test_torch_resize_agrees_with_library_pil_transform(encoders, spec, photos):
    enc = encoders[spec]
    paths = [photos["rocket"], photos["astronaut"]]  # 427x640 (odd crop offset) and square
    pil = _pil_inputs(spec, enc, paths)
    ours = torch.cat([enc.resize(read_image01(p)[None]) for p in paths])
    assert pil.shape == ours.shape == (2, 3, 224, 224)
    mean = torch.tensor(enc.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.preprocess.std).view(1, 3, 1, 1)
    assert (pil * std + mean - ours).abs().mean() < 0.01  # [0, 1] units
    with torch.no_grad():  # features of the rocket only (the harder case), to keep the test quick
        if spec.startswith("timm:"):
            ref = enc.model.forward_head(enc.model.forward_features(pil[:1]), pre_logits=True)
        else:
            ref = enc.model.encode_image(pil[:1])
        feats = enc.forward_resized(ours[:1])["embedding"]
    cos = F.cosine_similarity(ref, feats)
    assert (cos > 0.99).all(), cos


@pytest.mark.parametrize("crop_mode", ["squash", "border"])
def test_timm_crop_modes_match_timm_eval_transform(crop_mode, photos, tmp_path):
    """A timm model whose pretrained config crops by ``squash``/``border`` gets timm's own eval transform."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from probe.models.encoder import Encoder
    from probe.models.timm_models import timm_parts

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False,
                              pretrained_cfg_overlay={"crop_mode": crop_mode, "crop_pct": 0.9})
    enc = Encoder(f"timm:test_resnet-{crop_mode}", timm_parts(model))
    assert enc.preprocess.crop_mode == crop_mode and enc.preprocess.to_dict()["crop_mode"] == crop_mode
    tf = create_transform(**resolve_data_config({}, model=model))
    paths = [tmp_path / "wide.png", tmp_path / "tall.png"]  # both aspect ratios, small to keep the test quick
    Image.open(photos["rocket"]).resize((150, 100)).save(paths[0])
    Image.open(photos["coffee"]).resize((90, 130)).save(paths[1])
    pil = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    ours = torch.cat([enc.resize(read_image01(p)[None]) for p in paths])
    mean = torch.tensor(enc.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.preprocess.std).view(1, 3, 1, 1)
    assert pil.shape == ours.shape == (2, 3, 160, 160)
    assert (pil * std + mean - ours).abs().mean() < 0.01  # [0, 1] units; the other crop modes differ by far more
    centre = Encoder("timm:test_resnet", timm_parts(timm.create_model("test_resnet", pretrained=False)))
    assert ((pil * std + mean)[:1] - centre.resize(read_image01(paths[0])[None])).abs().mean() > 0.03
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(pil), pre_logits=True)
        feats = enc.forward_resized(ours)["embedding"]
    assert (F.cosine_similarity(ref, feats) > 0.99).all()
