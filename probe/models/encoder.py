"""The Encoder: one object per (network, layers) that maps [0, 1] images to feature vectors.

Every step is written in torch and stays differentiable, because the decoder back-propagates from the
feature loss through the preprocessing into the diffusion model. Extraction uses the very same code
(PIL only decodes the file into a [0, 1] tensor), so the features ``probe extract`` stores and the
features the decoder optimises are computed identically.

Pooling rule for hooked layers (documented in README):
  * ``[B, C, H, W]`` maps (CNN layers): global average over H and W -> ``[B, C]``;
  * ``[B, N, D]`` token sequences (ViT blocks): the class token (``token_pool="cls"``) or the mean of
    the patch tokens (``token_pool="mean"``) -> ``[B, D]``;
  * ``keep_spatial=True`` keeps the whole map, flattened to ``[B, C*H*W]`` (or ``[B, N*D]``); the
    store records the unflattened shape;
  * tuple/list outputs use their first tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from probe.errors import UsageError

EMBEDDING = "embedding"
LOGITS = "logits"
LUMA = (0.299, 0.587, 0.114)
CROP_MODES = ("center", "squash", "border")  # timm's eval crop modes
#: the largest network input side accepted from a config (Stable Diffusion works at 512; ViTs at <= 1024)
MAX_INPUT_SIDE = 4096


@dataclass
class Preprocess:
    """How a network wants its input, read from the model's own config.

    Adapt channels, resize to ``scale = floor(size / crop_pct)`` as ``crop_mode`` says, take the central
    ``size``×``size``, then normalise with ``mean``/``std`` — timm's eval transform
    (``timm.data.create_transform``) for each of its crop modes, open_clip's for ``center``:

      * ``center``: the shorter side to ``scale`` (aspect kept), centre crop;
      * ``squash``: both sides to ``scale`` (aspect not kept), centre crop;
      * ``border``: the longer side to ``scale`` (aspect kept), centre crop, padding any side that falls
        short with the mean colour (timm's ``CenterCropOrPad`` fill).
    ``resize_size`` (torchvision weights name it directly, 256 for 224) overrides ``scale``.
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    in_chans: int = 3
    crop_mode: str = "center"
    resize_size: int | None = None

    def __post_init__(self) -> None:
        # bounds on sizes before anything is allocated (a config saying size 10**9 is refused, issue 22)
        if not 1 <= self.size <= MAX_INPUT_SIDE:
            raise UsageError(f"input size must be 1..{MAX_INPUT_SIDE} pixels, not {self.size}")
        if not 1 <= self.in_chans <= 4:
            raise UsageError(f"in_chans must be 1..4, not {self.in_chans}")
        if not (0.0 < self.crop_pct <= 1.0):
            raise UsageError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        values = (*self.mean, *self.std)
        if len(self.mean) > 4 or len(self.std) > 4 or not all(math.isfinite(v) for v in values) \
                or any(v == 0 for v in self.std):
            raise UsageError(f"mean/std must be up to 4 finite numbers (std not 0), not {self.mean}/{self.std}")
        if self.crop_mode not in CROP_MODES:
            raise UsageError(f"crop_mode must be one of {', '.join(CROP_MODES)}, not {self.crop_mode!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_mode == "center":  # the record of stores made before crop modes existed: they resume
            del d["crop_mode"]
        if d["resize_size"] is None:  # stores written before the field existed compare equal
            del d["resize_size"]
        return d

    def adapt_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Grey priors feeding RGB networks repeat the channel; RGB into grey networks uses luma."""
        c = x.shape[1]
        if c == self.in_chans:
            return x
        if c == 1 and self.in_chans == 3:
            return x.expand(-1, 3, -1, -1)
        if c == 3 and self.in_chans == 1:
            w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            return (x * w).sum(1, keepdim=True)
        raise UsageError(f"cannot feed {c}-channel images to a network expecting {self.in_chans} channels")

    def _scaled_size(self, h: int, w: int) -> tuple[int, int]:
        scale = self.resize_size or math.floor(self.size / self.crop_pct)
        if self.crop_mode == "squash":
            return scale, scale
        if self.crop_mode == "border":  # timm's ResizeKeepRatio(longest=1): the longer side to scale
            ratio = max(h, w) / scale
            return round(h / ratio), round(w / ratio)
        if h <= w:
            return scale, max(scale, int(scale * w / h))
        return max(scale, int(scale * h / w)), scale

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> [B, in_chans, size, size] in [0, 1], differentiable."""
        x = self.adapt_channels(x)
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        nh, nw = self._scaled_size(h, w)
        if (nh, nw) != (h, w):
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
            kw = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
            x = F.interpolate(x, size=(nh, nw), mode=mode, **kw).clamp(0, 1)
        if nh < self.size or nw < self.size:  # border mode: pad with the mean colour, as timm does
            ph, pw = max(self.size, nh), max(self.size, nw)
            fill = torch.tensor([round(255 * m) / 255 for m in self.mean], dtype=x.dtype, device=x.device)
            canvas = fill.view(1, -1, 1, 1).expand(x.shape[0], x.shape[1], ph, pw).clone()
            top, left = (ph - nh) // 2, (pw - nw) // 2
            canvas[..., top:top + nh, left:left + nw] = x
            x, nh, nw = canvas, ph, pw
        # torchvision's CenterCrop rounds the offset (timm/open_clip eval transforms use it)
        top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
        return x[..., top:top + self.size, left:left + self.size]

    def resize_whole(self, x: torch.Tensor) -> torch.Tensor:
        """The whole image resized to size×size, bicubic, no crop, no antialias, no clamp, differentiable.

        The official code's loss path (``TF.resize(x, (224, 224), BICUBIC)`` on a tensor under torchvision
        0.12, which does not antialias); used by ``GuidanceConfig.loss_resize = "whole"``.
        """
        x = self.adapt_channels(x)
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def pool_output(out: object, keep_spatial: bool, token_pool: str, prefix_tokens: int) -> torch.Tensor:
    """Reduce a module's output to ``[B, D]`` by the rule in this module's docstring."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"layer output of type {type(out).__name__} is not a tensor")
    if out.dim() <= 2:
        return out.reshape(out.shape[0], -1)
    if keep_spatial:
        return out.flatten(1)
    if out.dim() == 4:
        return out.mean(dim=(2, 3))
    if out.dim() == 3:
        if token_pool == "cls":
            return out[:, 0]
        return out[:, prefix_tokens:].mean(1)
    return out.flatten(2).mean(-1)


@dataclass
class EncoderParts:
    """What a model family provides to build an Encoder (see registry.py)."""

    model: nn.Module
    preprocess: Preprocess
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    class_names: list[str] | None = None
    encode_text: Callable[[Sequence[str]], torch.Tensor] | None = None
    prefix_tokens: int = 1
    hookable: bool = True
    info: dict = field(default_factory=dict)


class Encoder(nn.Module):
    """A network with its preprocessing and the layers to read.

    ``enc(x01)`` returns the first layer's features; ``enc.features(x01)`` all of them from one pass.
    """

    def __init__(self, spec: str, parts: EncoderParts, layers: Sequence[str] | None = None,
                 keep_spatial: bool = False, token_pool: str = "cls", weights: str | None = None):
        super().__init__()
        self.spec = spec
        self.weights = weights
        self.model = parts.model.eval()
        for p in self.model.parameters():  # not requires_grad_(): ScriptModules do not support it
            p.requires_grad_(False)
        self.preprocess = parts.preprocess
        self._parts = parts
        self.layers = list(layers) if layers else [EMBEDDING]
        self.keep_spatial = keep_spatial
        if token_pool not in ("cls", "mean"):
            raise UsageError(f"token pooling must be 'cls' or 'mean', not {token_pool!r}")
        self.token_pool = token_pool
        self.class_names = parts.class_names
        self._captured: dict[str, object] = {}
        self._dims: dict[str, int] | None = None
        self.layer_shapes: dict[str, list[int]] = {}  # filled by each forward: see forward_resized
        self._handles = []
        modules = dict(self.model.named_modules())
        for name in self.layers:
            if name in (EMBEDDING, LOGITS):
                if name == LOGITS and parts.head is None:
                    raise UsageError(f"{spec} has no classifier head, so it has no 'logits' layer")
                continue
            if not name or name not in modules or not parts.hookable:  # '' is the whole model, not a layer
                raise UsageError(
                    f"{spec} has no layer {name!r}; list valid names with 'probe models layers {spec}'")
            self._handles.append(modules[name].register_forward_hook(self._capture(name)))

    def _capture(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output
        return hook

    @property
    def in_chans(self) -> int:
        return self.preprocess.in_chans

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    @property
    def has_text(self) -> bool:
        return self._parts.encode_text is not None

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    @property
    def feature_dims(self) -> dict[str, int]:
        """Length of each layer's feature vector. Found once, by one forward pass of a blank image (layers
        and pooling are fixed at construction, so the answer cannot change), and cached."""
        if self._dims is None:
            with torch.no_grad():
                x = torch.zeros(1, self.in_chans, self.input_size, self.input_size, device=self.device)
                feats = self.forward_resized(x)
            self._dims = {name: int(feats[name].flatten(1).shape[1]) for name in self.layers}
        return dict(self._dims)

    @property
    def feature_dim(self) -> int:
        """Length of the concatenated feature vector (the layers in ``self.layers`` order): a target's size."""
        return sum(self.feature_dims.values())

    @property
    def label_names(self) -> list[str] | None:
        """Class names of the classifier head's outputs (``logits`` index -> name), when the model has them."""
        return self.class_names

    def resize(self, x01: torch.Tensor) -> torch.Tensor:
        return self.preprocess.resize(x01)

    def forward_resized(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalise a resized [0, 1] batch and run the network once, reading every requested layer."""
        x = self.preprocess.normalize(x.to(self.device))
        self._captured.clear()
        emb = self._parts.embed(self.model, x)
        out: dict[str, torch.Tensor] = {}
        for name in self.layers:
            if name == EMBEDDING:
                out[name] = emb.reshape(emb.shape[0], -1) if not self.keep_spatial else emb.flatten(1)
            elif name == LOGITS:
                out[name] = self._parts.head(self.model, x)
            else:
                out[name] = pool_output(self._captured[name], self.keep_spatial, self.token_pool,
                                        self._parts.prefix_tokens)
            raw = emb if name == EMBEDDING else self._captured.get(name, out[name])
            while isinstance(raw, (tuple, list)):
                raw = raw[0]
            # per-sample shape before flattening (what --keep-spatial rows unflatten to; the store records it)
            self.layer_shapes[name] = list(raw.shape[1:]) if self.keep_spatial else [out[name].shape[1]]
        self._captured.clear()
        return out

    def features(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_resized(self.resize(x01))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.features(x01)[self.layers[0]]

    def classify(self, x01: torch.Tensor) -> torch.Tensor:
        if self._parts.head is None:
            raise UsageError(f"{self.spec} has no classifier head")
        x = self.preprocess.normalize(self.resize(x01).to(self.device))
        return self._parts.head(self.model, x)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        if self._parts.encode_text is None:
            raise UsageError(f"{self.spec} is not a CLIP model, so it cannot encode text prompts")
        return self._parts.encode_text(list(prompts))

    def record(self) -> dict:
        """What the store keeps as attributes so a feature can be traced to how it was made.

        ``weights_sha256`` identifies a local weights file (``--weights PATH``, or the file of a
        ``torchscript:PATH`` spec) by content, so replaced weights at the same path are told apart.
        A module encoder adds ``embedding``: which tensor its embedding is (see ``probe.models.modules``).
        """
        return {"model_spec": self.spec, "weights": self.weights or "", "weights_sha256": self.weights_sha256,
                "preprocess": self.preprocess.to_dict(), "keep_spatial": self.keep_spatial,
                "token_pool": self.token_pool,
                **({"embedding": self._parts.info["embedding"]} if "embedding" in self._parts.info else {})}

    @property
    def weights_sha256(self) -> str:
        """sha256 of the local weights file ('' for bundled, hub or random weights); hashed once."""
        if not hasattr(self, "_weights_sha256"):
            from pathlib import Path

            from probe.images import sha256_file

            file = self.weights if self.weights and self.weights != "random" else None
            if file is None and self.spec.startswith("torchscript:"):
                file = self.spec.split(":", 1)[1]
            self._weights_sha256 = sha256_file(file) if file and Path(file).is_file() else ""
        return self._weights_sha256
