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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probe.errors import InputError, ProbeError, UsageError
from probe.models.encoder import Encoder, EncoderParts

FAMILIES = ("bundled", "timm", "open_clip", "torchvision", "torchscript")
SPEC_FORMS = (
    ("bundled:NAME", "a model shipped with probe, e.g. bundled:fashion-cnn"),
    ("timm:NAME", "any timm model; hub weights, or --weights PATH|random"),
    ("open_clip:ARCH/TAG", "an open_clip model, e.g. open_clip:ViT-B-32/openai; or open_clip:ARCH --weights"),
    ("torchvision:ARCH/WEIGHTS", "a torchvision classifier, e.g. torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1"),
    ("torchscript:PATH", "a TorchScript file; preprocessing from PATH.json if present"),
)
DEFAULT_ENCODER = "bundled:fashion-cnn"


@dataclass(frozen=True)
class Spec:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family}:{self.name}"


def parse_spec(spec: str) -> Spec:
    family, sep, name = spec.partition(":")
    if not sep or family not in FAMILIES or not name:
        forms = ", ".join(f for f, _ in SPEC_FORMS)
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
    if s.family == "bundled":
        if weights is not None:
            raise UsageError("--weights applies to timm:, open_clip: and torchvision: specs, not bundled ones")
        from probe.models.bundled import load_bundled_encoder

        return load_bundled_encoder(s.name)
    if s.family == "timm":
        from probe.models.timm_models import load_timm

        return load_timm(s.name, weights)
    if s.family == "open_clip":
        from probe.models.open_clip_models import load_open_clip

        return load_open_clip(s.name, weights)
    if s.family == "torchvision":
        from probe.models.torchvision_models import load_torchvision

        return load_torchvision(s.name, weights)
    from probe.models.torchscript_models import load_torchscript

    return load_torchscript(s.name)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(spec: str, layers: Sequence[str] | None = None, weights: str | None = None,
                 device: str | torch.device | None = None, keep_spatial: bool = False,
                 token_pool: str = "cls") -> Encoder:
    """Build an Encoder for ``spec`` reading ``layers`` (default: the final embedding)."""
    target = resolve_device(device)
    parts = load_parts(spec, weights)
    enc = Encoder(spec, parts, layers=layers, keep_spatial=keep_spatial, token_pool=token_pool, weights=weights)
    return enc.to(target)


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
