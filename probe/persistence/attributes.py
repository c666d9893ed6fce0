"""Image measurements: the attributes whose persistence ``probe compare`` scores.

Every attribute is a documented function of one image. Images are float numpy arrays ``H×W×3`` in
``[0, 1]``; :func:`as_rgb` also accepts ``H×W`` / ``H×W×1`` grayscale, ``H×W×4`` (alpha dropped) and
``uint8`` arrays, so user measurements can call it and stay agnostic about the input form.

Attributes come in three kinds, because each needs its own notion of spread (see
:mod:`probe.persistence.scoring`):

* ``continuous`` — one float (brightness, mask area, a CLIP prompt score);
* ``vector`` — a fixed-length float vector (centroid, hue histogram, thumbnail, another network's
  features);
* ``categorical`` — a hashable label (the class a classifier predicts).

Built-in measurements (all registered in :data:`ATTRIBUTES`):

colour
    ``red``/``green``/``blue``: channel means. ``rgb_spread``: mean over channels of the per-channel
    standard deviation. ``saturation``/``value`` and ``saturation_spread``/``value_spread``: mean and
    standard deviation of HSV S and V. ``hue``: the chroma-weighted circular mean of hue as a 2-vector
    ``R·(cos h, sin h)`` — hue is an angle, so a scalar variance would call red (0°) and red (359°)
    far apart; ``R`` in ``[0, 1]`` is the resultant length (1 = a single hue). ``hue_spread``: the
    circular variance ``1 − R``. ``hue_histogram``: 12 bins of 30°, each pixel weighted by its chroma
    (``max − min`` of RGB) so grey pixels, whose hue is meaningless, do not vote; normalised to sum 1
    (all zeros for a grey image).
luminance
    ``brightness``: mean Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B``. ``contrast``: RMS contrast,
    the standard deviation of luma.
texture
    ``edge_density``: fraction of pixels whose Sobel gradient magnitude of luma (normalised so a sharp
    0→1 step reads 1) exceeds :data:`EDGE_THRESHOLD`. ``edge_orientation``: the dominant edge
    orientation from the image's structure tensor, as the doubled-angle 2-vector ``c·(cos 2θ, sin 2θ)``
    (θ in degrees anticlockwise from horizontal as displayed; orientations are axial, so θ and θ+180°
    must coincide, hence the doubled angle); ``c`` in ``[0, 1]`` is the coherence (0 = no preferred
    orientation or a flat image, 1 = all edges parallel). Vertical stripes give ``(−1, 0)``,
    horizontal stripes ``(1, 0)``.
shape
    A foreground mask by simple saliency: the background colour is the median of the image's
    one-pixel border; a pixel is foreground when its RGB distance to it (divided by √3, so in
    ``[0, 1]``) exceeds Otsu's threshold of that distance map, and at least
    :data:`MASK_MIN_DISTANCE` (so a flat, noisy image has no foreground). This suits centred objects on
    plain backgrounds (Fashion-MNIST, product shots, most decoded samples); cluttered photographs
    give rough masks. ``mask_area``: foreground fraction. ``mask_centroid``: ``(x, y)`` as fractions of
    width and height from the top-left corner. ``mask_bbox``: ``(left, top, right, bottom)`` as
    fractions (right/bottom exclusive). An empty mask has centroid ``(0.5, 0.5)`` and a zero-size box
    at the centre, so "nothing found" is a definite value rather than a NaN.
layout
    ``thumbnail``: an 8×8 area-averaged luma thumbnail (64-vector), compared by correlation
    (its dispersion is ``1 − mean pairwise Pearson correlation``), so where light and dark sit counts
    and overall brightness or contrast does not — those are their own attributes.

Model-based attributes are built from options, not registered globally, because they need weights:
:func:`classifier_attribute` (categorical: the predicted class of any encoder with a classifier head),
:func:`clip_prompt_attributes` (continuous: cosine similarity between the image and each user prompt
in a CLIP model's joint space, plus a categorical "best prompt" when there are two or more prompts) and
:func:`cross_model_attribute` (vector: another network's features of the image — does network B agree
the samples are alike?). :func:`model_attributes` builds them from spec strings; the model registry is
imported lazily so the pixel measurements work without it.

Adding a measurement::

    from probe.persistence.attributes import measurement

    @measurement("greenness", "continuous", group="colour", description="G minus mean of R and B")
    def greenness(img):
        img = as_rgb(img)
        return float((img[..., 1] - img[..., [0, 2]].mean(-1)).mean())
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from probe.errors import InputError, UsageError

Kind = Literal["continuous", "vector", "categorical"]
Dispersion = Literal["auto", "variance", "trace", "correlation", "disagreement"]
Value = Any  # float | np.ndarray | str, depending on the attribute's kind

KINDS: tuple[str, ...] = ("continuous", "vector", "categorical")
#: Sobel magnitude (0→1 step = 1) above which a pixel counts as an edge: a 10 % luma step.
EDGE_THRESHOLD = 0.1
#: Smallest colour distance to the background that can count as foreground (see module docstring).
MASK_MIN_DISTANCE = 0.1
#: Side of the layout thumbnail.
THUMBNAIL_SIDE = 8
#: Number of 30° hue-histogram bins.
HUE_BINS = 12


@dataclass
class Attribute:
    """One measurement: a name, a kind and a function of an image.

    ``fn`` maps one image (float ``H×W×3`` in ``[0, 1]``) to a value of the attribute's kind.
    ``batch_fn``, when given, maps a list of images to a list of values in one go — model-based
    attributes use it so a network runs on batches, not one image at a time. ``dispersion`` picks how
    :mod:`probe.persistence.scoring` measures spread; ``"auto"`` means variance for continuous, trace of the
    covariance for vector and disagreement for categorical attributes.
    """

    name: str
    kind: Kind
    fn: Callable[[np.ndarray], Value]
    group: str = "custom"
    description: str = ""
    dispersion: Dispersion = "auto"
    batch_fn: Callable[[list[np.ndarray]], list[Value]] | None = field(default=None, repr=False)
    #: the network that measures this attribute, for model-based ones: ``{"spec", "weights"}`` (+ an
    #: optional ``"role"``, e.g. "independent classifier for bundled:fashion-cnn"). ``probe compare`` marks
    #: the attribute *circular* when this is the network the samples were decoded with.
    model: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(
                f"attribute {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        allowed = {
            "continuous": {"auto", "variance"},
            "vector": {"auto", "trace", "correlation"},
            "categorical": {"auto", "disagreement"},
        }[self.kind]
        if self.dispersion not in allowed:
            raise UsageError(
                f"attribute {self.name!r}: dispersion {self.dispersion!r} does not fit kind {self.kind!r} "
                f"(choose from {', '.join(sorted(allowed))})"
            )

    @property
    def dispersion_name(self) -> str:
        """The concrete dispersion used ("auto" resolved by kind)."""
        if self.dispersion != "auto":
            return self.dispersion
        return {"continuous": "variance", "vector": "trace", "categorical": "disagreement"}[self.kind]

    def measure(self, images: Sequence[np.ndarray]) -> list[Value]:
        """Measure every image and coerce values to the kind's canonical type.

        Coercion happens here (float, 1-D float64 array, str) so the scores never depend on whether a
        user function returned a numpy scalar, a list or an int label.
        """
        images = list(images)
        if not images:
            return []
        raw = self.batch_fn(images) if self.batch_fn is not None else [self.fn(im) for im in images]
        if len(raw) != len(images):
            raise InputError(f"attribute {self.name!r} returned {len(raw)} values for {len(images)} images")
        return [self._coerce(v) for v in raw]

    def _coerce(self, value: Value) -> Value:
        if self.kind == "continuous":
            arr = np.asarray(value, dtype=np.float64)
            if arr.size != 1:
                raise InputError(f"attribute {self.name!r} is continuous but returned {arr.size} numbers")
            return float(arr.reshape(()))
        if self.kind == "vector":
            return np.asarray(value, dtype=np.float64).reshape(-1)
        if isinstance(value, np.generic):
            value = value.item()
        return value if isinstance(value, str) else str(value)


#: The registry of built-in and user measurements, by name.
ATTRIBUTES: dict[str, Attribute] = {}


def register_attribute(attribute: Attribute, *, replace: bool = False) -> Attribute:
    """Add ``attribute`` to :data:`ATTRIBUTES` so ``probe compare -a NAME`` can use it.

    Refuses to silently shadow an existing name (a plug-in overriding "brightness" by accident would
    change every report); pass ``replace=True`` to mean it.
    """
    if not isinstance(attribute, Attribute):
        raise UsageError(f"register_attribute needs an Attribute, got {type(attribute).__name__}")
    if attribute.name in ATTRIBUTES and not replace:
        raise UsageError(
            f"attribute {attribute.name!r} is already registered (pass replace=True to override)"
        )
    ATTRIBUTES[attribute.name] = attribute
    return attribute


def measurement(
    name: str, kind: Kind, *, group: str = "custom", description: str = "", dispersion: Dispersion = "auto",
    replace: bool = False,
) -> Callable[[Callable[[np.ndarray], Value]], Callable[[np.ndarray], Value]]:
    """Decorator form of :func:`register_attribute`; returns the function unchanged."""

    def wrap(fn: Callable[[np.ndarray], Value]) -> Callable[[np.ndarray], Value]:
        desc = description or (fn.__doc__ or "").strip().split("\n")[0]
        register_attribute(
            Attribute(name, kind, fn, group=group, description=desc, dispersion=dispersion), replace=replace
        )
        return fn

    return wrap


def get_attributes(names: Iterable[str] | None = None) -> list[Attribute]:
    """Look up registered attributes by name (all of them, in registration order, for ``None``)."""
    if names is None:
        return list(ATTRIBUTES.values())
    out = []
    for name in names:
        if name not in ATTRIBUTES:
            raise UsageError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTES)}")
        out.append(ATTRIBUTES[name])
    return out


# --------------------------------------------------------------------------------------------------
# image helpers


def as_rgb(img: np.ndarray) -> np.ndarray:
    """Return ``img`` as float64 ``H×W×3`` in ``[0, 1]``.

    Grayscale becomes three equal channels, alpha is dropped, integer images are scaled by their
    dtype's maximum. Values are clipped to ``[0, 1]`` so a slightly overshooting decoder output does
    not produce negative saturations.
    """
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        arr = arr.astype(np.float64)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.clip(arr, 0.0, 1.0)


def luma(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma ``H×W`` of an image."""
    rgb = as_rgb(img)
    return rgb @ np.array([0.299, 0.587, 0.114])


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """HSV ``H×W×3`` with hue in ``[0, 1)`` (fraction of a turn), saturation and value in ``[0, 1]``
    (matplotlib's conversion: grey pixels have hue and saturation 0)."""
    from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv

    return mpl_rgb_to_hsv(as_rgb(img))


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(-1) - rgb.min(-1)


def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel derivatives ``(gx, gy)`` of a 2-D array, ``gy`` pointing *up* the displayed image.

    scipy.ndimage's Sobel, normalised by 4 so a sharp unit step gives magnitude 1; borders replicate
    the edge pixel (``mode="nearest"``) so the image frame itself is not an edge.
    """
    from scipy import ndimage

    g = np.asarray(gray, dtype=np.float64)
    return ndimage.sobel(g, axis=1, mode="nearest") / 4.0, -ndimage.sobel(g, axis=0, mode="nearest") / 4.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in ``[0, 1]`` (``skimage.filters.threshold_otsu``) on a fixed histogram of
    ``[0, 1]``, so the threshold does not depend on the values' range.

    The bins' upper edges stand in for their centres (the between-class variance does not change when
    every level shifts by half a bin), so the result is the upper edge of the last background bin and
    ``values > threshold`` is the foreground. A single occupied bin has nothing to split: the first edge.
    """
    from skimage.filters import threshold_otsu

    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    if np.count_nonzero(hist) < 2:
        return float(edges[1])
    return float(threshold_otsu(hist=(hist, edges[1:])))


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """Boolean ``H×W`` foreground mask by distance to the border colour (see module docstring)."""
    rgb = as_rgb(img)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    background = np.median(border, axis=0)
    dist = np.linalg.norm(rgb - background, axis=-1) / np.sqrt(3.0)
    threshold = max(otsu_threshold(dist), MASK_MIN_DISTANCE)
    return dist > threshold


def resize_area(gray: np.ndarray, side: int) -> np.ndarray:
    """Area-average a 2-D array to ``side×side`` (PIL box filter, exact for integer factors)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
    return np.asarray(im.resize((side, side), Image.Resampling.BOX), dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# built-in measurements


def _channel_mean(c: int) -> Callable[[np.ndarray], float]:
    return lambda img: float(as_rgb(img)[..., c].mean())


for _i, _name in enumerate(("red", "green", "blue")):
    register_attribute(
        Attribute(_name, "continuous", _channel_mean(_i), group="colour", description=f"mean {_name} channel")
    )


@measurement("rgb_spread", "continuous", group="colour")
def rgb_spread(img: np.ndarray) -> float:
    """Mean over R, G, B of each channel's standard deviation."""
    return float(as_rgb(img).reshape(-1, 3).std(0).mean())


@measurement("hue", "vector", group="colour")
def hue(img: np.ndarray) -> np.ndarray:
    """Chroma-weighted circular mean hue as R·(cos h, sin h)."""
    rgb = as_rgb(img)
    w = _chroma(rgb).reshape(-1)
    if w.sum() <= 0:
        return np.zeros(2)
    angle = 2 * np.pi * rgb_to_hsv(rgb)[..., 0].reshape(-1)
    return np.array([np.sum(w * np.cos(angle)), np.sum(w * np.sin(angle))]) / w.sum()


@measurement("hue_spread", "continuous", group="colour")
def hue_spread(img: np.ndarray) -> float:
    """Circular variance of hue, 1 − R (0 = one hue; 1 for grey images)."""
    return float(1.0 - np.linalg.norm(hue(img)))


@measurement("hue_histogram", "vector", group="colour")
def hue_histogram(img: np.ndarray) -> np.ndarray:
    """12-bin chroma-weighted hue histogram, summing to 1 (zeros for grey)."""
    rgb = as_rgb(img)
    w = _chroma(rgb).reshape(-1)
    hist, _ = np.histogram(rgb_to_hsv(rgb)[..., 0].reshape(-1), bins=HUE_BINS, range=(0.0, 1.0), weights=w)
    total = hist.sum()
    return hist / total if total > 0 else np.zeros(HUE_BINS)


@measurement("saturation", "continuous", group="colour")
def saturation(img: np.ndarray) -> float:
    """Mean HSV saturation."""
    return float(rgb_to_hsv(img)[..., 1].mean())


@measurement("saturation_spread", "continuous", group="colour")
def saturation_spread(img: np.ndarray) -> float:
    """Standard deviation of HSV saturation."""
    return float(rgb_to_hsv(img)[..., 1].std())


@measurement("value", "continuous", group="colour")
def value(img: np.ndarray) -> float:
    """Mean HSV value (max of R, G, B)."""
    return float(as_rgb(img).max(-1).mean())


@measurement("value_spread", "continuous", group="colour")
def value_spread(img: np.ndarray) -> float:
    """Standard deviation of HSV value."""
    return float(as_rgb(img).max(-1).std())


@measurement("brightness", "continuous", group="luminance")
def brightness(img: np.ndarray) -> float:
    """Mean Rec. 601 luma."""
    return float(luma(img).mean())


@measurement("contrast", "continuous", group="luminance")
def contrast(img: np.ndarray) -> float:
    """RMS contrast: standard deviation of luma."""
    return float(luma(img).std())


@measurement("edge_density", "continuous", group="texture")
def edge_density(img: np.ndarray) -> float:
    """Fraction of pixels whose luma gradient exceeds EDGE_THRESHOLD."""
    gx, gy = sobel(luma(img))
    return float((np.hypot(gx, gy) > EDGE_THRESHOLD).mean())


@measurement("edge_orientation", "vector", group="texture")
def edge_orientation(img: np.ndarray) -> np.ndarray:
    """Dominant edge orientation as coherence·(cos 2θ, sin 2θ) from the structure tensor."""
    gx, gy = sobel(luma(img))
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    energy = jxx + jyy
    if energy <= 1e-12:
        return np.zeros(2)
    # the doubled-angle vector of the gradient direction; edges run perpendicular, i.e. its negation
    return -np.array([jxx - jyy, 2.0 * jxy]) / energy


def edge_angle_degrees(vec: np.ndarray) -> float:
    """Turn an ``edge_orientation`` vector back into an angle in ``[0, 180)`` degrees (for display)."""
    return float(np.degrees(np.arctan2(vec[1], vec[0]) / 2.0) % 180.0)


@measurement("mask_area", "continuous", group="shape")
def mask_area(img: np.ndarray) -> float:
    """Foreground fraction of the image."""
    return float(foreground_mask(img).mean())


@measurement("mask_centroid", "vector", group="shape")
def mask_centroid(img: np.ndarray) -> np.ndarray:
    """Foreground centroid (x, y) as fractions of width and height."""
    mask = foreground_mask(img)
    if not mask.any():
        return np.array([0.5, 0.5])
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([(xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h])


@measurement("mask_bbox", "vector", group="shape")
def mask_bbox(img: np.ndarray) -> np.ndarray:
    """Foreground bounding box (left, top, right, bottom) as fractions."""
    mask = foreground_mask(img)
    if not mask.any():
        return np.array([0.5, 0.5, 0.5, 0.5])
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


@measurement("thumbnail", "vector", group="layout", dispersion="correlation")
def thumbnail(img: np.ndarray) -> np.ndarray:
    """8×8 area-averaged luma thumbnail, compared by correlation."""
    return resize_area(luma(img), THUMBNAIL_SIDE).reshape(-1)


BUILTIN_ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTES)

#: On grey images (R = G = B in every pixel) the built-in colour measurements carry no colour: the channel
#: means and HSV value equal ``brightness`` (luma weights sum to 1), the channel and value spreads equal
#: ``contrast``, and hue and saturation are constant (no chroma), so their scores are NaN. ``probe
#: compare`` reports them once, as "colour (grey images: same as luminance)", instead of eleven rows.
GREY_EQUIVALENT: dict[str, str | None] = {
    "red": "brightness", "green": "brightness", "blue": "brightness", "value": "brightness",
    "rgb_spread": "contrast", "value_spread": "contrast",
    "hue": None, "hue_spread": None, "hue_histogram": None, "saturation": None, "saturation_spread": None,
}
#: Largest channel difference (on the 0–1 scale) that still counts as grey: one 8-bit level.
GREY_TOLERANCE = 1.0 / 255.0


def is_grey(img: np.ndarray) -> bool:
    """True when every pixel has R = G = B (within one 8-bit level): the image has no colour."""
    rgb = np.asarray(img)
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        return True
    rgb = rgb[..., :3].astype(np.float64)
    if np.issubdtype(np.asarray(img).dtype, np.integer):
        rgb = rgb / float(np.iinfo(np.asarray(img).dtype).max)
    return float(np.abs(rgb - rgb[..., :1]).max()) <= GREY_TOLERANCE


# --------------------------------------------------------------------------------------------------
# model-based attributes


def _to_tensor(images: Sequence[np.ndarray]) -> Any:
    import torch

    arr = np.stack([as_rgb(im) for im in images]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _encoder_device(enc: Any) -> Any:
    dev = getattr(enc, "device", None)
    if dev is not None and not callable(dev):
        return dev
    params = getattr(enc, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return "cpu"


def _run(enc: Any, images: list[np.ndarray], method: str | None, batch_size: int = 32) -> list[np.ndarray]:
    """Run ``enc`` (or ``enc.<method>``) on runs of same-sized images, without gradients.

    Images of different sizes cannot share a tensor, so consecutive equal-shape images are batched;
    ``torch.no_grad`` because the encoder keeps gradients for the decoder and measuring needs none.
    """
    import torch

    fn = enc if method is None else getattr(enc, method)
    device = _encoder_device(enc)
    out: list[np.ndarray] = []
    i = 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape[:2] == images[i].shape[:2]:
            j += 1
        with torch.no_grad():
            y = fn(_to_tensor(images[i:j]).to(device))
        out.extend(y.detach().float().cpu().numpy())
        i = j
    return out


def _load(spec_or_encoder: Any, device: str | None, weights: str | None = None) -> Any:
    if not isinstance(spec_or_encoder, str):
        return spec_or_encoder
    try:
        from probe.models.registry import load_encoder
    except ImportError as err:  # the registry is an optional part during development
        raise UsageError(
            f"cannot load model {spec_or_encoder!r}: the model registry is unavailable ({err})"
        ) from err
    return load_encoder(spec_or_encoder, weights=weights, device=device)


def _spec(enc: Any, fallback: str) -> str:
    return str(getattr(enc, "spec", None) or fallback)


def _model_info(enc: Any, fallback: str, role: str | None = None) -> dict[str, str]:
    info = {"spec": _spec(enc, fallback), "weights": str(getattr(enc, "weights", None) or ""),
            "weights_sha256": str(getattr(enc, "weights_sha256", None) or "")}
    if role:
        info["role"] = role
    return info


#: The independent classifier ``probe compare`` reads the class attribute with, by the encoder a run was
#: decoded with: a network of another kind, trained separately and never used for guidance, so the class it
#: reads is evidence about the image and not the guided network agreeing with itself (see
#: :func:`default_classifier`). One table, one place: add a row when a bundled pair exists.
INDEPENDENT_CLASSIFIERS: dict[str, str] = {
    "bundled:fashion-cnn": "bundled:fashion-mlp",
    "bundled:efficientnet_lite0": "bundled:efficientnet_lite2",
}
#: The class attribute when the decoded encoder is unknown (an image folder) or has no row above.
FALLBACK_CLASSIFIER = "bundled:fashion-cnn"


def default_classifier(decoded_encoders: Iterable[str] = ()) -> tuple[str, str | None]:
    """The classifier for compare's default class attribute, and why (``None`` = the plain fallback).

    With one decoded encoder that has an independent classifier in :data:`INDEPENDENT_CLASSIFIERS`, that
    one; otherwise :data:`FALLBACK_CLASSIFIER` (which compare marks circular if it is the decoded network).
    """
    specs = sorted({s for s in decoded_encoders if s})
    if len(specs) == 1 and specs[0] in INDEPENDENT_CLASSIFIERS:
        return INDEPENDENT_CLASSIFIERS[specs[0]], f"independent classifier for {specs[0]}"
    return FALLBACK_CLASSIFIER, None


def classifier_attribute(
    spec_or_encoder: Any, *, device: str | None = None, name: str | None = None, batch_size: int = 32,
    role: str | None = None,
) -> Attribute:
    """Categorical attribute: the class an encoder's classifier head predicts (its ``class_names``).

    Persistence of the predicted class is the paper's semantic question in one number: do all samples
    decoded from one feature show the same kind of object?
    """
    enc = _load(spec_or_encoder, device)
    spec = _spec(enc, "classifier")
    names = getattr(enc, "class_names", None)

    def batch(images: list[np.ndarray]) -> list[str]:
        logits = _run(enc, images, "classify", batch_size)
        idx = [int(np.argmax(row)) for row in logits]
        return [names[i] if names and i < len(names) else f"class {i}" for i in idx]

    return Attribute(
        name or f"class ({spec})", "categorical", lambda img: batch([img])[0], group="semantics",
        description=f"class predicted by {spec}" + (f" ({role})" if role else ""), batch_fn=batch,
        model=_model_info(enc, "classifier", role),
    )


class _EmbeddingCache:
    """Image embeddings keyed by content hash, so several prompt attributes share one forward pass."""

    def __init__(self, enc: Any, batch_size: int, max_items: int = 8192):
        self.enc, self.batch_size, self.max_items = enc, batch_size, max_items
        self.store: dict[bytes, np.ndarray] = {}

    @staticmethod
    def key(img: np.ndarray) -> bytes:
        arr = np.ascontiguousarray(img)
        return hashlib.sha1(arr.tobytes() + str((arr.shape, arr.dtype)).encode()).digest()

    def get(self, images: list[np.ndarray]) -> list[np.ndarray]:
        keys = [self.key(im) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            if len(self.store) + len(missing) > self.max_items:
                self.store.clear()
            feats = _run(self.enc, [images[i] for i in missing], None, self.batch_size)
            for i, f in zip(missing, feats, strict=True):
                self.store[keys[i]] = f / max(float(np.linalg.norm(f)), 1e-12)
        return [self.store[k] for k in keys]


def clip_prompt_attributes(
    spec_or_encoder: Any, prompts: Sequence[str], *, device: str | None = None, batch_size: int = 32
) -> list[Attribute]:
    """Zero-shot attributes from a CLIP model: one continuous score per prompt (+ the best prompt).

    The score is the cosine similarity of image and prompt embeddings. Raw CLIP cosines live in a
    narrow band (≈0.15–0.35), but persistence is a ratio of spreads, so the scale cancels. With two or
    more prompts a categorical ``clip best prompt`` attribute records which prompt wins.
    """
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UsageError("CLIP attributes need at least one --prompt")
    enc = _load(spec_or_encoder, device)
    spec = _spec(enc, "clip")
    if not getattr(enc, "has_text", False):
        raise UsageError(
            f"model {spec} has no text encoder; --clip needs a CLIP model (e.g. open_clip:ViT-B-32/openai)"
        )
    import torch

    with torch.no_grad():
        text = enc.encode_text(list(prompts)).detach().float().cpu().numpy()
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    cache = _EmbeddingCache(enc, batch_size)

    def scores(images: list[np.ndarray]) -> np.ndarray:
        return np.stack(cache.get(images)) @ text.T

    attrs = []
    for j, prompt in enumerate(prompts):
        def batch(images: list[np.ndarray], j: int = j) -> list[float]:
            return [float(s) for s in scores(images)[:, j]]

        attrs.append(Attribute(
            f"clip: {prompt}", "continuous", lambda img, b=batch: b([img])[0], group="semantics",
            description=f"cosine similarity to {prompt!r} in {spec}", batch_fn=batch,
            model=_model_info(enc, "clip"),
        ))
    if len(prompts) >= 2:
        def best(images: list[np.ndarray]) -> list[str]:
            return [prompts[int(i)] for i in np.argmax(scores(images), axis=1)]

        attrs.append(Attribute(
            "clip best prompt", "categorical", lambda img: best([img])[0], group="semantics",
            description=f"the best-matching prompt in {spec}", batch_fn=best, model=_model_info(enc, "clip"),
        ))
    return attrs


def cross_model_attribute(
    spec_or_encoder: Any, *, device: str | None = None, weights: str | None = None, name: str | None = None,
    batch_size: int = 32,
) -> Attribute:
    """Vector attribute: another network's features (first hooked layer) of the image.

    Answers "does network B agree the samples are alike?": a score near 0 means B barely tells the
    decoded samples apart compared with the reference images.
    """
    enc = _load(spec_or_encoder, device, weights)
    spec = _spec(enc, "model")

    def batch(images: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(f, dtype=np.float64).reshape(-1) for f in _run(enc, images, None, batch_size)]

    return Attribute(
        name or f"features ({spec})", "vector", lambda img: batch([img])[0], group="cross-model",
        description=f"features of {spec}", batch_fn=batch, model=_model_info(enc, "model"),
    )


@dataclass
class ModelAttributeOptions:
    """Which model-based attributes to build (the CLI's --classifier/--clip/--prompt/--cross-model)."""

    classifiers: list[str] = field(default_factory=list)
    #: why each classifier was chosen (e.g. "independent classifier for bundled:fashion-cnn"), by spec
    classifier_roles: dict[str, str] = field(default_factory=dict)
    clip: str | None = None
    prompts: list[str] = field(default_factory=list)
    cross_models: list[str] = field(default_factory=list)
    #: ``--weights`` for the cross models (a local checkpoint, or "random" for an untrained network)
    cross_model_weights: str | None = None
    device: str | None = None
    batch_size: int = 32


def model_attributes(options: ModelAttributeOptions) -> list[Attribute]:
    """Build the model-based attributes the options ask for (loading each model once)."""
    if options.prompts and not options.clip:
        raise UsageError("--prompt needs --clip SPEC (a CLIP model to score the prompts)")
    out: list[Attribute] = []
    for spec in options.classifiers:
        out.append(classifier_attribute(spec, device=options.device, batch_size=options.batch_size,
                                        role=options.classifier_roles.get(spec)))
    if options.clip:
        out.extend(clip_prompt_attributes(options.clip, options.prompts, device=options.device,
                                          batch_size=options.batch_size))
    for spec in options.cross_models:
        out.append(cross_model_attribute(spec, device=options.device, weights=options.cross_model_weights,
                                         batch_size=options.batch_size))
    return out
