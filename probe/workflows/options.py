"""Frozen option sets shared by the workflows (and built by the CLI's one shared decorator).

* :class:`EncoderOptions` -- which network and layers, and the one rule that infers them from a store;
* :class:`DecodeOptions` -- everything a decode run takes besides its targets: samples, seeds, batching,
  baseline, the guidance preset and any sampler override (a :class:`~probe.diffusion.schedules.GuidanceConfig`
  field), and how the prior computes (``precision``, ``checkpoint``: :meth:`Prior.configure`).
  :meth:`DecodeOptions.build` refuses a name it does not know, so an option can never be silently dropped
  on its way from the command line (or a notebook) to the sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.diffusion.priors import check_compute
from probe.diffusion.schedules import DEFAULT_PRESET, GuidanceConfig, preset
from probe.errors import UsageError
from probe.models.registry import DEFAULT_ENCODER


@dataclass(frozen=True)
class EncoderOptions:
    """How to build the encoder: a spec (None = infer), its weights, layers, pooling and device."""

    spec: str | None = None
    weights: str | None = None
    layers: tuple[str, ...] = ()
    keep_spatial: bool = False
    token_pool: str | None = None  # None: the store's, else "cls"
    device: str | None = None

    def resolved(self, store: str | Path | None = None, group: str | None = None) -> EncoderOptions:
        """The one rule for every command: with no spec, use the encoder recorded in ``store``'s group
        (its weights, layer, pooling and spatial flag, each unless given); without a store, the default
        encoder. Pooling defaults to ``cls``."""
        opts = self
        if opts.spec is None and store is not None and Path(store).is_file():
            from probe.models.registry import spec_from_data
            from probe.store import FeatureStore

            with FeatureStore(store, "r") as st:
                a = st.group(group).attrs
            # data never names code: only weight-only families load without -m (docs/security.md)
            spec_from_data(a.get("model_spec"), None if opts.weights else a.get("weights"), store)
            opts = dataclasses.replace(
                opts, spec=a.get("model_spec"), weights=opts.weights or a.get("weights") or None,
                layers=opts.layers or ((a["layer"],) if a.get("layer") else ()),
                keep_spatial=opts.keep_spatial or bool(a.get("keep_spatial", False)),
                token_pool=opts.token_pool or a.get("token_pool") or None)
        return dataclasses.replace(opts, spec=opts.spec or DEFAULT_ENCODER, token_pool=opts.token_pool or "cls")

    def load(self, store: str | Path | None = None, group: str | None = None):
        """The :class:`~probe.models.encoder.Encoder` these options name (see :meth:`resolved`)."""
        from probe.models.registry import load_encoder

        o = self.resolved(store, group)
        return load_encoder(o.spec, layers=list(o.layers) or None, weights=o.weights, device=o.device,
                            keep_spatial=o.keep_spatial, token_pool=o.token_pool)


#: sampler overrides by their public names; values are GuidanceConfig fields (``patience`` reads better)
OVERRIDE_ALIASES = {"patience": "stop_patience"}
GUIDANCE_FIELDS = tuple(f.name for f in dataclasses.fields(GuidanceConfig) if f.name != "name")


@dataclass(frozen=True)
class DecodeOptions:
    """A decode run's settings besides targets, encoder and prior. ``overrides`` change the preset;
    ``precision`` and ``checkpoint`` configure the prior (:meth:`~probe.diffusion.priors.Prior.configure`;
    None keeps the prior's own, fp32 and none for a freshly loaded one)."""

    samples: int = 4
    seed: int = 0
    batch_size: int = 8
    schedule: str = DEFAULT_PRESET
    overrides: Mapping[str, Any] = field(default_factory=dict)
    baseline: bool = True
    overwrite: bool = False
    trajectory_every: int = 0
    precision: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", _FrozenDict(self.overrides))
        check_compute(self.precision, self.checkpoint)
        self.config()  # an unknown schedule or a bad override fails now, not after loading the models

    @classmethod
    def build(cls, base: DecodeOptions | None = None, **options: Any) -> DecodeOptions:
        """``base`` with ``options`` applied: DecodeOptions fields by name, anything else a sampler
        override (``steps=``, ``weight=``, ``patience=`` …; ``None`` = not given). An unknown name is a
        UsageError, never ignored."""
        base = base or cls()
        own = {f.name for f in dataclasses.fields(cls)} - {"overrides"}
        fields = {k: v for k, v in options.items() if k in own and v is not None}  # None: not given
        overrides = dict(base.overrides)
        unknown = []
        for key, value in options.items():
            if key in own:
                continue
            name = OVERRIDE_ALIASES.get(key, key)
            if name not in GUIDANCE_FIELDS:
                unknown.append(key)
            elif value is not None:
                overrides[name] = value
        if unknown:
            raise UsageError(f"unknown decode option(s): {', '.join(sorted(unknown))}; decode options are "
                             f"{', '.join(sorted(own))} and the sampler settings {', '.join(GUIDANCE_FIELDS)}")
        return dataclasses.replace(base, **fields, overrides=overrides)

    def config(self) -> GuidanceConfig:
        """The guidance preset with the overrides applied."""
        return preset(self.schedule, **dict(self.overrides))

    def settings(self):
        """The decode pipeline's :class:`~probe.decoding.DecodeSettings`."""
        from probe.decoding import DecodeSettings

        return DecodeSettings(samples=self.samples, seed=self.seed, batch_size=self.batch_size,
                              config=self.config(), trajectory_every=self.trajectory_every,
                              baseline=self.baseline, overwrite=self.overwrite)


class _FrozenDict(dict):
    """A dict that refuses changes, so a frozen DecodeOptions stays frozen all the way down."""

    def _refuse(self, *_a: object, **_k: object) -> None:
        raise TypeError("DecodeOptions.overrides is read-only; use DecodeOptions.build")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))
