"""The data start: the prior's own training images, searched by feature, choose where each decode starts.

The seed pool (``probe.seed_pool``) starts a decode from the prior's unguided sample closest to the target;
on the emoji prior (FD 81.6 to held-out emoji) that pool rarely holds the target's kind of object — bread,
a rabbit, a taxi are drawn as people — while a search of the prior's *training* emoji by the same feature
finds the target's kind for most targets (category judge 1.13× the real targets', docs/naturalness.md).
With ``GuidanceConfig.data_start`` = t/T, sample s of a target starts from the training image ranked s by
feature (then s + S, …), noised to that level; the prior and guidance redraw it from there. The
layout is a real image's, so the decode stays on the prior's data; its feature is what guidance reaches.

Only priors whose training data probe knows have a data pool: the bundled priors (``probe.reference``'s
loaders). The pool is the first ``config.pool`` images of a seeded permutation of that data (all of it
when smaller); their features are computed once per network and cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probe.cache import keyed_path, load_arrays, save_arrays
from probe.diffusion.priors import Prior
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import UsageError
from probe.reference import REFERENCE_DATA, encode_uint8, training_images
from probe.seed_pool import SeedPool

DATA_SEED = 1  # the permutation of the training data whose first ``pool`` images form the data pool


def has_data(prior_spec: str) -> bool:
    """Whether the training data of ``prior_spec`` is known to probe and installed, so decodes can start
    from it (what ``--schedule auto`` checks before picking a data-start preset)."""
    return training_images(prior_spec) is not None


def data_images(prior_spec: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [min(n, N), C, H, W]: the first ``n`` of a seeded permutation of the prior's training images,
    and their indices in that data."""
    data = training_images(prior_spec)
    if data is None:
        known = prior_spec in REFERENCE_DATA
        raise UsageError(f"--data-start: the training data of prior {prior_spec!r} is "
                         + ("not installed (probe's dataset loaders could not read it)" if known else
                            f"not known to probe (known: {', '.join(REFERENCE_DATA)})")
                         + "; use --data-start 0 (the seed pool or plain noise)")
    pick = np.random.default_rng(DATA_SEED).permutation(len(data))[:n]
    return np.ascontiguousarray(data[pick]), pick


@dataclass
class DataStarts:
    """Where each row's chain starts: the prior's latents [rows, *latent shape] of the picked training
    images, and those images' indices in the prior's training data (the manifest's ``start_image``)."""

    latents: torch.Tensor
    indices: list[int]


def data_pool(prior: Prior, encoder, n: int, cache: bool = True) -> tuple[np.ndarray, np.ndarray, SeedPool]:
    """The data pool's images, their indices in the prior's training data, and a :class:`SeedPool` over them
    (its "seeds" are positions in the pool)."""
    images, index = data_images(prior.spec, n)
    path = keyed_path("data-pool-features", {"version": 1, "prior": prior.spec, "n": len(images),
                                             "seed": DATA_SEED, "encoder": encoder.record(),
                                             "layers": list(encoder.layers)})
    have = load_arrays(path) if cache else None
    if have is not None:
        features = have["features"]
    else:
        features = encode_uint8(encoder, images).astype(np.float32)
        if cache:
            save_arrays(path, features=features)
    return images, index, SeedPool(seeds=np.arange(len(images), dtype=np.int64), features=features)


def data_starts(prior: Prior, encoder, config: GuidanceConfig, vectors: np.ndarray, samples: Sequence[int],
                n_samples: int) -> DataStarts | None:
    """Where ``config``'s chains start (None without ``data_start``): row i, target ``vectors[i]`` decoded as
    sample ``samples[i]`` of ``n_samples``, starts from the training image ranked ``samples[i]`` by feature
    (``config.pool_rank``), so the samples of one target start from different images."""
    if not config.data_start:
        return None
    images, index, pool = data_pool(prior, encoder, config.pool)
    rows = [p[0] for p in pool.assign(np.asarray(vectors), samples, n_samples, 1, config.pool_rank)]
    x = torch.from_numpy(images[rows]).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = prior.encode(x.to(prior.device)).float().cpu()
    return DataStarts(latents=latents, indices=[int(index[r]) for r in rows])
