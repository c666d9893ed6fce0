"""Option sets shared by several commands (one definition, one behaviour)."""

from __future__ import annotations

import functools

import click

from probe.models.encoder import Encoder
from probe.models.registry import DEFAULT_ENCODER, load_encoder


def encoder_options(multiple_layers: bool = False, default: str = DEFAULT_ENCODER):
    """--model/--weights/--layer/--keep-spatial/--token-pool/--device."""

    def wrap(fn):
        opts = [
            click.option("-m", "--model", "spec", default=default, show_default=True,
                         help="Model spec: bundled:NAME, timm:NAME, open_clip:ARCH/TAG, torchscript:PATH."),
            click.option("--weights", help="Local checkpoint for a timm/open_clip architecture, or 'random'."),
            click.option("--layer", "layers", multiple=multiple_layers,
                         help="Module name to read (see 'probe models layers SPEC'); default: the embedding."
                         + (" Repeatable." if multiple_layers else "")),
            click.option("--keep-spatial", is_flag=True, help="Keep hooked maps whole instead of pooling."),
            click.option("--token-pool", type=click.Choice(["cls", "mean"]), default="cls", show_default=True,
                         help="How ViT token outputs become a vector."),
            click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda when present]"),
        ]
        for opt in reversed(opts):
            fn = opt(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            keys = ("spec", "weights", "layers", "keep_spatial", "token_pool", "device")
            kwargs["enc_opts"] = {k: kwargs.pop(k) for k in keys}
            return fn(*args, **kwargs)
        return inner
    return wrap


def load_encoder_from_options(opts: dict) -> Encoder:
    layers = opts["layers"]
    if isinstance(layers, str):
        layers = [layers]
    return load_encoder(opts["spec"], layers=list(layers) if layers else None, weights=opts["weights"],
                        device=opts["device"], keep_spatial=opts["keep_spatial"], token_pool=opts["token_pool"])
