"""probe: look inside vision networks by decoding their features back into images.

The Python API (docs/api.md): everything the ``probe`` command does, on tensors and model objects::

    import probe
    enc = probe.load_encoder("bundled:fashion-cnn")           # or any nn.Module with preprocess=...
    res = probe.decode(enc, "shirt.png", samples=4)            # res.images [N, C, H, W], res.distances
    probe.interpolate(enc, "a.png", "b.png", out="walk")       # writes what 'probe interpolate' writes

Names load lazily (PEP 562), so ``import probe`` and ``probe --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_encoder": ("probe.models.registry", "load_encoder"),
    "load_prior": ("probe.diffusion.priors", "load_prior"),
    "extract": ("probe.workflows.extract", "run"),
    "decode": ("probe.workflows.decode", "run"),
    "interpolate": ("probe.workflows.walks.interpolate", "run"),
    "perturb": ("probe.workflows.walks.perturb", "run"),
    "map": ("probe.workflows.walks.map", "run"),
    "merge": ("probe.workflows.merge", "run"),
    "compare": ("probe.workflows.compare", "run"),
    "resolve_targets": ("probe.targets", "resolve_targets"),
    "DecodeOptions": ("probe.workflows.options", "DecodeOptions"),
    "EncoderOptions": ("probe.workflows.options", "EncoderOptions"),
    "DecodeResult": ("probe.workflows.decode", "DecodeResult"),
    "DecodePlan": ("probe.workflows.decode", "DecodePlan"),
    "InterpolateResult": ("probe.workflows.walks.interpolate", "InterpolateResult"),
    "PerturbResult": ("probe.workflows.walks.perturb", "PerturbResult"),
    "MapResult": ("probe.workflows.walks.map", "MapResult"),
    "ExtractResult": ("probe.workflows.extract", "ExtractResult"),
    "ExtractPlan": ("probe.workflows.extract", "ExtractPlan"),
    "MergeResult": ("probe.workflows.merge", "MergeResult"),
    "Shard": ("probe.distributed", "Shard"),
    "CompareResult": ("probe.persistence.scoring", "CompareResult"),
    "Encoder": ("probe.models.encoder", "Encoder"),
    "Preprocess": ("probe.models.encoder", "Preprocess"),
    "Target": ("probe.targets", "Target"),
    "Targets": ("probe.targets", "Targets"),
    "SampleRecord": ("probe.manifest", "SampleRecord"),
    "Manifest": ("probe.manifest", "Manifest"),
    "PRESETS": ("probe.diffusion.schedules", "PRESETS"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
