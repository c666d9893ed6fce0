"""Where each decode's chains start: plain seeds, the seed pool's picks, or the prior's own training images.

One call for every caller of the sampler (the decode pipeline, the walks, the benchmarks), so a start
option is wired in one place: ``sample(..., **chain_starts(...).sampler_kwargs())``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probe.data_pool import data_starts, has_data
from probe.diffusion.priors import Prior
from probe.diffusion.schedules import GuidanceConfig
from probe.seed_pool import CHUNK, pool_at_hand, pool_chain_seeds


@dataclass
class ChainStarts:
    """The sampler's ``chain_seeds`` (seed-pool picks, or None) and ``start_images`` (latents of the training
    images a data start begins from, or None), with those images' indices in the prior's data."""

    chain_seeds: list[list[int]] | None = None
    start_images: torch.Tensor | None = None
    start_indices: list[int] | None = None

    def sampler_kwargs(self) -> dict:
        return {"chain_seeds": self.chain_seeds, "start_images": self.start_images}

    def record(self, row: int) -> dict:
        """Manifest keys of row ``row``: the training image a data start began from."""
        return {} if self.start_indices is None else {"start_image": self.start_indices[row]}


def chain_starts(prior: Prior, encoder, config: GuidanceConfig, vectors: np.ndarray, samples: Sequence[int],
                 n_samples: int, batch: int = CHUNK,
                 on_progress: Callable[[int, int], None] | None = None) -> ChainStarts:
    """Where row i (target ``vectors[i]``, sample ``samples[i]`` of ``n_samples``) starts under ``config``:
    a data start (``config.data_start``), else the seed pool's picks (``config.pool``), else plain seeds."""
    vectors = np.asarray(vectors)
    data = data_starts(prior, encoder, config, vectors, samples, n_samples)
    if data is not None:
        return ChainStarts(start_images=data.latents, start_indices=data.indices)
    return ChainStarts(chain_seeds=pool_chain_seeds(prior, encoder, config, vectors, samples, n_samples, batch,
                                                    on_progress))


def start_at_hand(prior: Prior, config: GuidanceConfig) -> bool:
    """Whether ``config``'s starts cost nothing to set up: a data start where the prior's training data is
    known and installed, a seed pool where its images are shipped or cached, plain seeds always. What the
    rule schedules (``--schedule auto`` / ``fast``) pick by (docs/method.md)."""
    if config.data_start:
        return has_data(prior.spec)
    return pool_at_hand(prior, config) if config.pool else True
