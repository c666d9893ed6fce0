"""Each measurement on synthetic images whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from probe.errors import InputError, UsageError
from probe.persistence import attributes as A


def square(colour=(1.0, 0.0, 0.0), size=32, top=8, left=8, side=8, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    img = np.empty((size, size, 3))
    img[:] = background
    img[top:top + side, left:left + side] = colour
    return img


def stripes(vertical: bool, size=32, period=4) -> np.ndarray:
    idx = np.arange(size)
    line = ((idx // (period // 2)) % 2).astype(float)
    gray = np.tile(line, (size, 1)) if vertical else np.tile(line[:, None], (1, size))
    return gray


# ---------------------------------------------------------------------------------------------- images


def test_as_rgb_accepts_grayscale_uint8_and_rgba():
    gray = np.full((4, 5), 0.25)
    assert A.as_rgb(gray).shape == (4, 5, 3)
    assert np.allclose(A.as_rgb(gray)[..., 0], A.as_rgb(gray)[..., 2])
    assert np.allclose(A.as_rgb(np.full((2, 2, 3), 255, np.uint8)), 1.0)
    rgba = np.zeros((2, 2, 4))
    rgba[..., 3] = 1
    assert A.as_rgb(rgba).shape == (2, 2, 3) and A.as_rgb(rgba).max() == 0
    assert A.as_rgb(np.full((2, 2, 3), 1.5)).max() == 1.0  # clipped


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), (0, 4, 3), (2, 2, 3, 1)])
def test_as_rgb_rejects_bad_shapes(shape):
    with pytest.raises(InputError):
        A.as_rgb(np.zeros(shape))


def test_grayscale_2d_and_3_channel_measure_the_same():
    gray = np.random.default_rng(0).random((16, 16))
    for attr in A.get_attributes():
        a, b = attr.measure([gray, np.repeat(gray[..., None], 3, axis=2)])
        assert np.allclose(a, b) if attr.kind != "categorical" else a == b, attr.name


# ---------------------------------------------------------------------------------------------- colour


def test_red_square_is_red():
    img = square((1.0, 0.0, 0.0))
    frac = 64 / 1024
    assert A.ATTRIBUTES["red"].fn(img) == pytest.approx(frac)
    assert A.ATTRIBUTES["green"].fn(img) == 0 and A.ATTRIBUTES["blue"].fn(img) == 0
    hist = A.hue_histogram(img)
    assert hist[0] == pytest.approx(1.0) and hist.sum() == pytest.approx(1.0)
    assert np.allclose(A.hue(img), [1.0, 0.0])
    assert A.hue_spread(img) == pytest.approx(0.0)


def test_hue_of_primaries_and_hsv():
    assert np.allclose(A.hue(square((0.0, 1.0, 0.0))), [np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3)])
    assert int(np.argmax(A.hue_histogram(square((0.0, 0.0, 1.0))))) == 8  # 240° / 30°
    hsv = A.rgb_to_hsv(np.array([[[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]]]))
    assert hsv[0, 0] == pytest.approx([30 / 360, 1.0, 1.0])
    assert hsv[0, 1] == pytest.approx([0.0, 0.0, 0.2])


def test_hue_is_circular():
    """Reds on either side of 0° are close in hue; a scalar hue would put them 358° apart."""
    a = np.full((4, 4, 3), [1.0, 0.0, 0.02])  # ≈ 359°
    b = np.full((4, 4, 3), [1.0, 0.02, 0.0])  # ≈ 1°
    assert np.linalg.norm(A.hue(a) - A.hue(b)) < 0.05


def test_two_hues_spread_and_grey_has_no_hue():
    img = np.zeros((4, 4, 3))
    img[:2] = [1, 0, 0]
    img[2:] = [0, 1, 1]  # opposite hue: resultant cancels
    assert A.hue_spread(img) == pytest.approx(1.0)
    grey = np.full((4, 4, 3), 0.5)
    assert np.all(A.hue_histogram(grey) == 0) and np.all(A.hue(grey) == 0)
    assert A.saturation(grey) == 0 and A.value(grey) == pytest.approx(0.5)


def test_spreads():
    flat = np.full((8, 8, 3), 0.3)
    for fn in (A.rgb_spread, A.saturation_spread, A.value_spread):
        assert fn(flat) == pytest.approx(0.0, abs=1e-12)
    half = np.zeros((8, 8, 3))
    half[:, 4:] = 1.0
    assert A.rgb_spread(half) == pytest.approx(0.5)
    assert A.value_spread(half) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- luminance


def test_brightness_and_contrast():
    assert A.brightness(np.ones((4, 4, 3))) == pytest.approx(1.0)
    assert A.brightness(np.zeros((4, 4))) == 0
    assert A.brightness(square((0, 1, 0), side=32, top=0, left=0)) == pytest.approx(0.587)
    half = np.zeros((8, 8))
    half[:4] = 1.0
    assert A.contrast(half) == pytest.approx(0.5)
    assert A.contrast(np.full((8, 8), 0.7)) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- texture


def test_edge_density():
    assert A.edge_density(np.full((16, 16), 0.5)) == 0
    half = np.zeros((16, 16))
    half[:, 8:] = 1
    assert A.edge_density(half) == pytest.approx(2 / 16)  # the two columns either side of the step
    # 2-pixel stripes: every column touches a step except the two border columns (edge-replicated)
    assert A.edge_density(stripes(vertical=True)) == pytest.approx(30 / 32)


def test_edge_orientation_of_stripes():
    v = A.edge_orientation(stripes(vertical=True))
    h = A.edge_orientation(stripes(vertical=False))
    assert np.allclose(v, [-1, 0], atol=1e-9) and A.edge_angle_degrees(v) == pytest.approx(90)
    assert np.allclose(h, [1, 0], atol=1e-9) and A.edge_angle_degrees(h) == pytest.approx(0)
    diag = np.fromfunction(lambda i, j: ((i + j) // 3) % 2, (32, 32)).astype(float)  # lines "/" on screen
    assert A.edge_angle_degrees(A.edge_orientation(diag)) == pytest.approx(45, abs=1)
    assert np.all(A.edge_orientation(np.zeros((8, 8))) == 0)


# ---------------------------------------------------------------------------------------------- shape


def test_mask_of_a_square():
    img = square((1, 1, 1), size=32, top=4, left=8, side=8)
    assert A.mask_area(img) == pytest.approx(64 / 1024)
    assert A.mask_centroid(img) == pytest.approx([12 / 32, 8 / 32])
    assert A.mask_bbox(img) == pytest.approx([8 / 32, 4 / 32, 16 / 32, 12 / 32])


def test_shifted_square_moves_the_centroid():
    a = A.mask_centroid(square(left=4, top=10))
    b = A.mask_centroid(square(left=14, top=10))
    assert b - a == pytest.approx([10 / 32, 0.0])


def test_mask_on_light_background_and_empty_mask():
    dark_on_light = square((0.1, 0.1, 0.1), background=(0.9, 0.9, 0.9), top=0, left=0, side=16)
    assert A.mask_area(dark_on_light) == pytest.approx(0.25)
    noise = 0.5 + 0.01 * np.random.default_rng(1).standard_normal((32, 32, 3))
    assert A.mask_area(noise) == 0
    assert np.allclose(A.mask_centroid(noise), [0.5, 0.5])
    assert np.allclose(A.mask_bbox(noise), [0.5] * 4)


def test_otsu_splits_two_levels():
    vals = np.r_[np.full(100, 0.2), np.full(100, 0.8)]
    assert 0.2 < A.otsu_threshold(vals) <= 0.8


# ---------------------------------------------------------------------------------------------- layout


def test_thumbnail_is_area_average():
    img = np.zeros((32, 32))
    img[:16, :16] = 1.0
    th = A.thumbnail(img).reshape(8, 8)
    assert th.shape == (8, 8)
    assert np.allclose(th[:4, :4], 1.0) and np.allclose(th[4:], 0) and np.allclose(th[:, 4:], 0)
    assert A.ATTRIBUTES["thumbnail"].dispersion_name == "correlation"


# ---------------------------------------------------------------------------------------------- registry


def test_every_builtin_is_documented_and_measures():
    img = square()
    for name in A.BUILTIN_ATTRIBUTES:
        attr = A.ATTRIBUTES[name]
        assert attr.description, name
        (val,) = attr.measure([img])
        if attr.kind == "continuous":
            assert isinstance(val, float) and np.isfinite(val)
        else:
            assert isinstance(val, np.ndarray) and val.ndim == 1 and np.all(np.isfinite(val))


def test_register_a_user_attribute(monkeypatch):
    monkeypatch.setattr(A, "ATTRIBUTES", dict(A.ATTRIBUTES))

    @A.measurement("greenness", "continuous", group="colour")
    def greenness(img):
        """G minus the mean of R and B."""
        img = A.as_rgb(img)
        return np.float32((img[..., 1] - img[..., [0, 2]].mean(-1)).mean())

    attr = A.get_attributes(["greenness"])[0]
    assert attr.description == "G minus the mean of R and B."
    assert isinstance(attr.measure([square((0, 1, 0))])[0], float)
    with pytest.raises(UsageError, match="already registered"):
        A.register_attribute(A.Attribute("greenness", "continuous", greenness))
    A.register_attribute(A.Attribute("greenness", "categorical", lambda im: 3), replace=True)
    assert A.ATTRIBUTES["greenness"].measure([square()]) == ["3"]


def test_attribute_validation():
    with pytest.raises(UsageError, match="kind"):
        A.Attribute("x", "ordinal", lambda im: 0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="dispersion"):
        A.Attribute("x", "continuous", lambda im: 0, dispersion="correlation")
    with pytest.raises(UsageError, match="unknown attribute 'nope'"):
        A.get_attributes(["nope"])
    with pytest.raises(InputError, match="returned 2 numbers"):
        A.Attribute("x", "continuous", lambda im: [1, 2]).measure([square()])


# ---------------------------------------------------------------------------------------------- models


class DoubleEncoder(nn.Module):
    """Test double with the Encoder contract: features = mean RGB, classes by dominant channel."""

    spec = "test:double"
    class_names = ["reddish", "greenish", "bluish"]
    has_text = True

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert x01.ndim == 4 and x01.shape[1] == 3 and 0 <= float(x01.min()) and float(x01.max()) <= 1
        return x01.mean(dim=(2, 3)) * self.scale

    def classify(self, x01: torch.Tensor) -> torch.Tensor:
        return self.forward(x01)

    def encode_text(self, prompts):
        table = {"a red object": [1.0, 0, 0], "a green object": [0, 1.0, 0], "a blue object": [0, 0, 1.0]}
        return torch.tensor([table[p] for p in prompts])


def test_classifier_attribute_with_an_encoder_object():
    enc = DoubleEncoder()
    attr = A.classifier_attribute(enc)
    assert attr.kind == "categorical" and attr.name == "class (test:double)"
    imgs = [square((1, 0, 0)), square((0, 0, 1)), square((0, 1, 0), size=16)]  # mixed sizes
    assert attr.measure(imgs) == ["reddish", "bluish", "greenish"]
    assert attr.fn(square((0, 0, 1))) == "bluish"


def test_clip_prompt_attributes_share_one_forward_pass():
    enc = DoubleEncoder()
    attrs = A.clip_prompt_attributes(enc, ["a red object", "a blue object"])
    assert [a.name for a in attrs] == ["clip: a red object", "clip: a blue object", "clip best prompt"]
    imgs = [square((1, 0, 0)), square((0, 0, 1))]
    red, blue, best = (a.measure(imgs) for a in attrs)
    assert red[0] == pytest.approx(1.0) and red[1] == pytest.approx(0.0)
    assert blue[1] == pytest.approx(1.0)
    assert best == ["a red object", "a blue object"]
    assert enc.calls == 1  # cached by content for the second and third attribute
    assert len(A.clip_prompt_attributes(enc, ["a green object"])) == 1  # no "best" with one prompt


def test_clip_needs_text_and_prompts():
    enc = DoubleEncoder()
    enc.has_text = False
    with pytest.raises(UsageError, match="no text encoder"):
        A.clip_prompt_attributes(enc, ["a red object"])
    with pytest.raises(UsageError, match="at least one"):
        A.clip_prompt_attributes(DoubleEncoder(), [" "])
    with pytest.raises(UsageError, match="--prompt needs --clip"):
        A.model_attributes(A.ModelAttributeOptions(prompts=["a red object"]))


def test_cross_model_attribute_with_an_encoder_object():
    attr = A.cross_model_attribute(DoubleEncoder())
    (v,) = attr.measure([square((0, 1, 0), side=32, top=0, left=0)])
    assert attr.kind == "vector" and attr.group == "cross-model"
    assert v == pytest.approx([0, 1, 0])


def test_cross_model_attribute_with_a_registry_model():
    registry = pytest.importorskip("probe.models.registry")
    pytest.importorskip("timm")
    enc = registry.load_encoder("timm:resnet18", weights="random", device="cpu")
    attr = A.cross_model_attribute(enc)
    vals = attr.measure([square((1, 0, 0)), square((1, 0, 0)), square((0, 0, 1), left=20)])
    assert attr.name == "features (timm:resnet18)"
    assert vals[0].shape == (512,) and np.all(np.isfinite(vals[0]))
    assert np.allclose(vals[0], vals[1]) and not np.allclose(vals[0], vals[2])


def test_model_attributes_from_specs_go_through_the_registry():
    pytest.importorskip("probe.models.registry")
    pytest.importorskip("timm")
    attrs = A.model_attributes(A.ModelAttributeOptions(cross_models=["timm:resnet18"], cross_model_weights="random",
                                                       device="cpu"))
    assert [a.name for a in attrs] == ["features (timm:resnet18)"]
    with pytest.raises(UsageError):
        A.model_attributes(A.ModelAttributeOptions(classifiers=["nonsense-spec"], device="cpu"))
