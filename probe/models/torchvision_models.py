"""torchvision classification networks: ``torchvision:ARCH/WEIGHTS`` (weights enum names).

``torchvision:resnet50/IMAGENET1K_V1`` and ``torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1`` are two of the
paper's networks. The preprocessing is the weights' own eval transform (``weights.transforms()``: resize
size, crop size, interpolation, mean/std), so a ViT-H/14 SWAG E2E gets its 518-px input. The embedding is
the input of the final classifier layer (the paper replaces ``fc``/``heads.head`` by Identity and reads
the output: the same vector); ``logits`` is the model's output; any module of ``named_modules()`` can be
read as a layer. ``--weights random`` builds the architecture at random init with the named weights'
preprocessing and input size (offline tests); ``--weights PATH`` loads a local state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probe.errors import UsageError
from probe.models.encoder import EncoderParts, Preprocess

TORCH_HUB = "https://download.pytorch.org"


@dataclass(frozen=True)
class TorchvisionSpec:
    arch: str
    weights: str  # enum member name, "" = the architecture's DEFAULT weights (for the preprocessing)


def parse_torchvision(name: str) -> TorchvisionSpec:
    arch, _, weights = name.partition("/")
    return TorchvisionSpec(arch, weights)


def resolve_weights(spec: TorchvisionSpec):
    """The weights enum member named by the spec (checked without building or downloading anything)."""
    import torchvision.models as tvm

    if spec.arch not in tvm.list_models(module=tvm):
        raise UsageError(f"torchvision has no classification model {spec.arch!r}; see "
                         f"torchvision.models.list_models()")
    enum = tvm.get_model_weights(spec.arch)
    if not spec.weights:
        return enum.DEFAULT
    try:
        return enum[spec.weights]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise UsageError(f"torchvision:{spec.arch} has no weights {spec.weights!r}; choose one of {names}") from None


def torchvision_preprocess(weights) -> Preprocess:
    """Preprocess from the weights' eval transform (ImageClassification: resize, crop, interpolation, mean/std)."""
    t = weights.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0])
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    return Preprocess(size=crop, mean=tuple(float(m) for m in t.mean), std=tuple(float(s) for s in t.std),
                      crop_pct=crop / resize, interpolation=interp, in_chans=3, resize_size=resize)


def _classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    """The final classification layer: the last Linear producing ``num_classes`` outputs."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise UsageError(f"{type(model).__name__}: no final Linear layer with {num_classes} outputs found")
    return heads[-1]


def classifier_parts(model: nn.Module, head_layer: nn.Module, preprocess: Preprocess,
                     class_names: list[str] | None = None, info: dict | None = None) -> EncoderParts:
    """Embedding = the (flattened) input of ``head_layer``; head = the model's output."""
    captured: dict[str, torch.Tensor] = {}

    def grab(_module, inputs):
        captured["x"] = inputs[0]
    head_layer.register_forward_pre_hook(grab)

    def embed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m(x)
        return captured.pop("x").flatten(1)

    def head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(x)

    return EncoderParts(model=model, preprocess=preprocess, embed=embed, head=head, class_names=class_names,
                        prefix_tokens=1, info=dict(info or {}))


def torchvision_parts(model: nn.Module, weights, arch: str) -> EncoderParts:
    categories = list(weights.meta.get("categories") or [])
    head_layer = _classifier(model, len(categories) or 1000)
    return classifier_parts(model, head_layer, torchvision_preprocess(weights), class_names=categories or None,
                            info={"family": "torchvision", "arch": arch, "weights_enum": str(weights)})


def build_torchvision(spec: TorchvisionSpec, pretrained: bool) -> tuple[nn.Module, object]:
    """The model (with the named weights downloaded when ``pretrained``) and its weights enum member."""
    import torchvision.models as tvm

    weights = resolve_weights(spec)
    if pretrained:
        from probe.models.hub import hub_access

        with hub_access(f"torchvision:{spec.arch}/{weights.name}", host=TORCH_HUB):
            weights.get_state_dict(progress=False, check_hash=True)  # download first: fail before building
        return tvm.get_model(spec.arch, weights=weights), weights  # now read from torch.hub's cache
    kwargs: dict = {"num_classes": len(weights.meta.get("categories") or []) or 1000}
    min_size = weights.meta.get("min_size")
    if spec.arch.startswith("vit_") and min_size:  # the weights fix the ViT's input size (518 for SWAG E2E)
        kwargs["image_size"] = int(min_size[0])
    return tvm.get_model(spec.arch, weights=None, **kwargs), weights


def load_torchvision(name: str, weights_arg: str | None) -> EncoderParts:
    spec = parse_torchvision(name)
    if weights_arg is None and not spec.weights:
        raise UsageError(f"torchvision:{spec.arch} needs a weights name (torchvision:{spec.arch}/WEIGHTS, e.g. "
                         f"{resolve_weights(spec).name}) or --weights PATH|random")
    model, weights = build_torchvision(spec, pretrained=weights_arg is None)
    if weights_arg not in (None, "random"):
        from probe.models.checkpoints import load_state_dict_into

        load_state_dict_into(model, weights_arg)
    return torchvision_parts(model.eval(), weights, spec.arch)
