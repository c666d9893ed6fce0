"""Guided diffusion decoding: priors (what images look like), schedules (how hard to guide), the sampler."""

from probe.diffusion.priors import DEFAULT_PRIOR, Prior, load_prior
from probe.diffusion.sampler import SampleResult, sample
from probe.diffusion.schedules import DEFAULT_PRESET, PRESETS, GuidanceConfig, preset

__all__ = ["DEFAULT_PRESET", "DEFAULT_PRIOR", "PRESETS", "GuidanceConfig", "Prior", "SampleResult", "load_prior",
           "preset", "sample"]
