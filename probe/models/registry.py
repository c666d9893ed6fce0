"""Spec strings -> Encoder objects. One string names a network everywhere in probe.

Forms:
  ``bundled:NAME``             shipped with probe (``probe models list``)
  ``timm:NAME``                timm architecture with hub weights; ``--weights PATH`` loads a local
                               checkpoint instead, ``--weights random`` keeps random init;
                               ``timm:hf-hub:ORG/NAME`` a timm model hosted on the Hugging Face hub
  ``open_clip:ARCH/TAG``       open_clip model with pretrained tag (hub); ``open_clip:ARCH`` + --weights;
                               ``open_clip:hf-hub:ORG/NAME`` a model hosted on the Hugging Face hub
  ``torchvision:ARCH/WEIGHTS`` torchvision classifier with a weights enum name (torch.hub download);
                               ``--weights random|PATH`` builds ARCH with WEIGHTS' preprocessing
  ``torchscript:PATH``         a scripted/traced module whose output is the embedding
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.errors import InputError, ProbeError, UsageError
from probe.models.encoder import Encoder, EncoderParts, Preprocess

DEFAULT_ENCODER = "bundled:fashion-cnn"


@dataclass(frozen=True)
class Family:
    """One spec family: the form of its specs, what it means (``probe models list``), and its loader
    ``load(name, weights) -> EncoderParts`` (``name`` is the spec after ``family:``)."""

    form: str
    help: str
    load: Callable[[str, str | None], EncoderParts]


def _bundled(name: str, weights: str | None) -> EncoderParts:
    if weights is not None:
        raise UsageError("--weights applies to timm:, open_clip: and torchvision: specs, not bundled ones")
    from probe.models.bundled import load_bundled_encoder

    return load_bundled_encoder(name)


def _timm(name: str, weights: str | None) -> EncoderParts:
    from probe.models.timm_models import load_timm

    return load_timm(name, weights)


def _open_clip(name: str, weights: str | None) -> EncoderParts:
    from probe.models.open_clip_models import load_open_clip

    return load_open_clip(name, weights)


def _torchvision(name: str, weights: str | None) -> EncoderParts:
    from probe.models.torchvision_models import load_torchvision

    return load_torchvision(name, weights)


def _torchscript(name: str, weights: str | None) -> EncoderParts:
    from probe.models.torchscript_models import load_torchscript

    return load_torchscript(name)


#: family name -> Family: the one table of what a spec can name (as timm's model registry); add a family with
#: :func:`register_family`. Loaders import their library only when called, so listing families stays cheap.
FAMILIES: dict[str, Family] = {
    "bundled": Family("bundled:NAME", "a model shipped with probe, e.g. bundled:fashion-cnn", _bundled),
    "timm": Family("timm:NAME", "any timm model; hub weights, or --weights PATH|random", _timm),
    "open_clip": Family("open_clip:ARCH/TAG",
                        "an open_clip model, e.g. open_clip:ViT-B-32/openai; or open_clip:ARCH --weights", _open_clip),
    "torchvision": Family("torchvision:ARCH/WEIGHTS",
                          "a torchvision classifier, e.g. torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1", _torchvision),
    "torchscript": Family("torchscript:PATH", "a TorchScript file; preprocessing from PATH.json if present",
                          _torchscript),
}


def register_family(name: str, family: Family, *, replace: bool = False) -> Family:
    """Add a spec family (``name:…`` specs then load through ``family.load``)."""
    if name in FAMILIES and not replace:
        raise UsageError(f"model family {name!r} exists; pass replace=True to replace it")
    FAMILIES[name] = family
    return family


def spec_forms() -> list[tuple[str, str]]:
    """(form, meaning) of every family, for ``probe models list`` and error messages."""
    return [(f.form, f.help) for f in FAMILIES.values()]


SPEC_FORMS = tuple(spec_forms())  # the built-in families' forms


@dataclass(frozen=True)
class Spec:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family}:{self.name}"


def parse_spec(spec: str) -> Spec:
    family, sep, name = spec.partition(":")
    if not sep or family not in FAMILIES or not name:
        forms = ", ".join(f for f, _ in spec_forms())
        raise UsageError(f"unknown model spec {spec!r}: use one of {forms} (see 'probe models list')")
    return Spec(family, name)


#: families whose weights a store may name without the user confirming the spec (``-m``): they load weights
#: that the library itself lists (bundled files, timm/open_clip/torchvision names), never code from a file
DATA_SAFE_FAMILIES = ("bundled", "timm", "open_clip", "torchvision")


def spec_from_data(spec: object, weights: object, source: object) -> None:
    """Refuse (UsageError, exit 2) a model that a data file (a store's ``model_spec``/``weights``) names
    when loading it could run code: TorchScript files, Hugging Face hub repositories (``hf-hub:``), local
    pickle checkpoints. Safe ones: the families above with their own hub weights, ``random`` or a
    ``.safetensors`` file. The user confirms any other by naming it on the command line (``-m``)."""
    text = str(spec or "")
    if not text:
        return  # nothing named: the default encoder
    family, _, name = text.partition(":")
    w = str(weights or "")
    why = None
    if family not in DATA_SAFE_FAMILIES:
        why = f"its {family or 'model'} family runs code from a file"
    elif "hf-hub:" in name:
        why = "it names a Hugging Face hub repository, whose files may run code"
    elif w and w != "random" and not w.endswith(".safetensors"):
        why = f"its weights {w!r} are a pickle checkpoint"
    if why:
        given = f"{text}{f' --weights {w}' if w else ''}"
        raise UsageError(f"{source}: was made by {given}; probe does not load a model named by a data file when "
                         f"{why}: pass -m {given} on the command line to confirm")


RANDOM_SEED = 0  # --weights random: the same random network in every process, so a rerun resumes correctly


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A usable torch device, or a UsageError naming the bad ``--device`` (before any model is loaded)."""
    if device is None:
        return default_device()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {device}: no such CUDA device here (use cpu)")
    if d.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available here (use cpu)")
    if d.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: unsupported device type {d.type!r}; use cpu, cuda, cuda:N or mps")
    return d


def load_parts(spec: str, weights: str | None = None) -> EncoderParts:
    try:
        return _load_parts_seeded(spec, weights)
    except ProbeError:
        raise
    except OSError as exc:  # hub weights not downloadable (offline), missing cache, unreadable file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{spec}: cannot load the model's weights ({first}); offline? pass --weights PATH "
                         "for a local checkpoint") from exc


def _load_parts_seeded(spec: str, weights: str | None = None) -> EncoderParts:
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return _load_parts(spec, weights)
    return _load_parts(spec, weights)


def _load_parts(spec: str, weights: str | None = None) -> EncoderParts:
    s = parse_spec(spec)
    return FAMILIES[s.family].load(s.name, weights)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(spec_or_module: str | nn.Module | Encoder,
                 preprocess: Preprocess | Mapping[str, Any] | None = None,
                 layers: Sequence[str] | str | None = None, *, weights: str | None = None,
                 device: str | torch.device | None = None, keep_spatial: bool = False, token_pool: str = "cls",
                 embed: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 class_names: Sequence[str] | None = None, name: str | None = None) -> Encoder:
    """An :class:`~probe.models.encoder.Encoder` from a spec (``bundled:fashion-cnn``, ``timm:resnet50``,
    ``open_clip:ViT-B-32/openai``, ``torchscript:net.pt``; see :data:`FAMILIES`) or from any ``nn.Module``,
    reading ``layers`` (default: the final embedding).

    A module needs ``preprocess`` (a :class:`Preprocess`, a dict of its fields, or a timm data config)
    unless it is a timm model; its output is the embedding unless ``embed(model, x)`` says otherwise,
    ``head(model, x)`` gives logits (with ``class_names``) and ``layers`` name submodules to read
    (``dict(model.named_modules())``). ``name`` is the spec recorded in outputs (default
    ``module:ClassName``).
    """
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(spec_or_module, Encoder):
        if layers is None or list(layers) == spec_or_module.layers:
            return spec_or_module if device is None else spec_or_module.to(device)
        spec_or_module = spec_or_module.model
    if isinstance(spec_or_module, str):
        if preprocess is not None or embed is not None or head is not None:
            raise UsageError("preprocess=, embed= and head= apply to a module; a spec brings its own")
        target = resolve_device(device)
        parts = load_parts(spec_or_module, weights)
        enc = Encoder(spec_or_module, parts, layers=layers, keep_spatial=keep_spatial, token_pool=token_pool,
                      weights=weights)
        return enc.to(target)
    from probe.models.modules import module_parts

    parts = module_parts(spec_or_module, preprocess, embed=embed, head=head, class_names=class_names)
    enc = Encoder(name or f"module:{type(spec_or_module).__name__}", parts, layers=layers,
                  keep_spatial=keep_spatial, token_pool=token_pool, weights=weights)
    return enc.to(device or default_device())


def list_layers(spec: str, weights: str | None = None) -> list[dict]:
    """Every named module with its output shape for one input of the model's size (for ``models layers``)."""
    parts = load_parts(spec, weights)
    model = parts.model.eval()
    shapes: dict[str, str] = {}
    handles = []
    if parts.hookable:
        for name, mod in model.named_modules():
            if not name:
                continue

            def hook(_m, _i, out, name=name):
                while isinstance(out, (tuple, list)) and out:
                    out = out[0]
                if isinstance(out, torch.Tensor):
                    shapes[name] = "x".join(str(s) for s in out.shape[1:])
            handles.append(mod.register_forward_hook(hook))
    pre = parts.preprocess
    with torch.no_grad():
        x = pre.normalize(torch.rand(1, pre.in_chans, pre.size, pre.size))
        emb = parts.embed(model, x)
    for h in handles:
        h.remove()
    rows = [{"name": "embedding", "type": "(default) final embedding", "shape": "x".join(map(str, emb.shape[1:]))}]
    if parts.head is not None:
        rows.append({"name": "logits", "type": "classifier head", "shape": str(len(parts.class_names or []) or "?")})
    for name, mod in model.named_modules():
        if name in shapes:
            rows.append({"name": name, "type": type(mod).__name__, "shape": shapes[name]})
    return rows
