"""timm networks: ``timm:NAME`` (hub weights), with ``--weights PATH`` or ``--weights random``;
``timm:hf-hub:ORG/NAME`` for a timm model hosted on the Hugging Face hub (its config comes from there too)."""

from __future__ import annotations

from torch import nn

from probe.errors import UsageError
from probe.models.encoder import EncoderParts, Preprocess


def timm_preprocess(model: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    c, size, _ = cfg["input_size"]
    return Preprocess(size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      crop_pct=float(cfg.get("crop_pct", 1.0)), interpolation=cfg["interpolation"], in_chans=c,
                      crop_mode=cfg.get("crop_mode") or "center")


def imagenet_names(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def timm_parts(model: nn.Module) -> EncoderParts:
    """Embedding = timm's pre-logits vector (``forward_head(..., pre_logits=True)``)."""

    def embed(m: nn.Module, x):
        return m.forward_head(m.forward_features(x), pre_logits=True)

    def head(m: nn.Module, x):
        return m(x)

    has_head = getattr(model, "num_classes", 0) > 0
    return EncoderParts(
        model=model, preprocess=timm_preprocess(model), embed=embed, head=head if has_head else None,
        class_names=imagenet_names(getattr(model, "num_classes", 0)),
        prefix_tokens=getattr(model, "num_prefix_tokens", 1),
    )


def load_timm(name: str, weights: str | None) -> EncoderParts:
    import timm

    from probe.models.hub import hub_access

    on_hub = name.startswith("hf-hub:")
    if on_hub and name.count("/") != 1:
        raise UsageError(f"timm:{name}: use timm:hf-hub:ORG/NAME")
    if not on_hub and not timm.is_model(name):
        raise UsageError(f"timm has no model {name!r}; see timm.list_models() for the names")
    if weights is None:
        with hub_access(f"timm:{name}"):
            model = timm.create_model(name, pretrained=True)
    elif on_hub:
        with hub_access(f"timm:{name}"):  # an hf-hub: model reads its config from the hub
            model = timm.create_model(name, pretrained=False)
    else:  # no network involved
        model = timm.create_model(name, pretrained=False)
        if weights != "random":
            from probe.models.checkpoints import load_state_dict_into

            load_state_dict_into(model, weights)
    return timm_parts(model)
