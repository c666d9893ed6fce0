"""Frozen option sets shared by the workflows (and built by the CLI's one shared decorator).

* :class:`EncoderOptions` -- which network and layers, and the one rule that infers them from a store;
* :class:`DecodeOptions` -- everything a decode run takes besides its targets: samples, seeds, batching,
  baseline, the guidance preset and any sampler override (a :class:`~probe.diffusion.schedules.GuidanceConfig`
  field), and how the prior computes (``precision``, ``checkpoint``: :meth:`Prior.configure`).
  :meth:`DecodeOptions.build` refuses a name it does not know, so an option can never be silently dropped
  on its way from the command line (or a notebook) to the sampler; every value is checked when the options
  are built, before any model loads;
* :class:`DecodeSettings` -- what the decode pipeline reads: :meth:`DecodeOptions.settings` with the preset
  and overrides resolved into one GuidanceConfig (tests and benchmarks build it directly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.diffusion.priors import check_compute
from probe.diffusion.schedules import DEFAULT_PRESET, AutoSchedule, GuidanceConfig, schedule
from probe.errors import UsageError
from probe.models.registry import DEFAULT_ENCODER
from probe.naturalness import OFF_MANIFOLD


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
    batch_size: int | str = "auto"
    schedule: str = DEFAULT_PRESET
    overrides: Mapping[str, Any] = field(default_factory=dict)
    baseline: bool = True
    overwrite: bool = False
    trajectory_every: int = 0
    precision: str | None = None
    checkpoint: str | None = None
    progress: bool | None = None  # the API's progress bar: None = in a terminal or notebook

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", _FrozenDict(self.overrides))
        check_compute(self.precision, self.checkpoint)
        self.settings()  # a bad value, an unknown schedule or override fails now, not after loading the models

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

    def config(self) -> GuidanceConfig | AutoSchedule:
        """The guidance preset with the overrides applied (for ``auto``, both of its candidates: the decode
        picks one once the prior is loaded)."""
        return schedule(self.schedule, **dict(self.overrides))

    def settings(self) -> DecodeSettings:
        """The decode pipeline's :class:`DecodeSettings` (the preset resolved into one GuidanceConfig)."""
        return DecodeSettings(samples=self.samples, seed=self.seed, batch_size=self.batch_size,
                              config=self.config(), trajectory_every=self.trajectory_every,
                              baseline=self.baseline, overwrite=self.overwrite, progress=self.progress)


#: chains per decode-grid group when --batch-size is 'auto' (the grid only assigns samples to shards)
GRID_CHAINS = 8


@dataclass
class DecodeSettings:
    """Run-level settings (the sampler's own knobs live in ``config``)."""

    samples: int = 4
    seed: int = 0
    batch_size: int | str = "auto"
    # ``auto`` (an AutoSchedule) is resolved by the decode once the prior is loaded (decode_targets)
    config: GuidanceConfig | AutoSchedule = field(default_factory=lambda: schedule(DEFAULT_PRESET))
    trajectory_every: int = 0
    baseline: bool = True
    overwrite: bool = False
    sheet: bool = True
    realism: bool = True
    off_manifold_threshold: float = OFF_MANIFOLD
    progress: bool | None = None  # the API's progress bar without on_event: None = when interactive

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"--samples must be >= 1, not {self.samples}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                         or self.batch_size < 1):
            raise UsageError(f"--batch-size must be 'auto' or an integer >= 1, not {self.batch_size!r}")
        if self.trajectory_every < 0:
            raise UsageError("--save-trajectory must be >= 0")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, not {self.seed}")

    @property
    def samples_per_batch(self) -> int:
        """Samples per group of the decode grid (which shard decodes what; the manifest's order): as many as
        ``batch_size`` chains hold (8 for 'auto', the earlier default, so older folders resume and shard
        alike). The sampler's queue runs all of a run's samples; ``chains_per_call`` bounds its calls."""
        return self.config.samples_per_call(GRID_CHAINS if self.batch_size == "auto" else self.batch_size)

    def chains_per_call(self, prior, encoder) -> int:
        """``batch_size``, or for 'auto' a value chosen from the device and the networks' memory."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        from probe.diffusion.memory import auto_chains

        return auto_chains(prior, encoder)

    def seed_of(self, sample_index: int) -> int:
        return self.seed + sample_index

    def to_dict(self) -> dict:
        return {**self.config.to_dict(), "samples": self.samples, "seed": self.seed,
                "batch_size": self.batch_size}


class _FrozenDict(dict):
    """A dict that refuses changes, so a frozen DecodeOptions stays frozen all the way down."""

    def _refuse(self, *_a: object, **_k: object) -> None:
        raise TypeError("DecodeOptions.overrides is read-only; use DecodeOptions.build")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))
