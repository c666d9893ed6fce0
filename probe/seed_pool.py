"""The seed pool: the prior's own unguided samples, searched by feature, choose where each decode starts.

A guided decode's large layout is fixed in its first, noisiest steps, where guidance is (and must be, to
stay natural) weak. The presets therefore try 48 candidate seeds and keep the one whose x̂0 is closest to
the target after 8 steps; but x̂0 there is a blur, and on the emoji prior the closest blur is the one that
matches the target's colours: decodes reached their ImageNet features twice as closely as the nearest
training emoji did, yet showed other objects. The pool judges whole samples instead. ``pool`` seeds
(``POOL_SEED`` + p) are sampled once, unguided, on the decode's own timesteps (so seed p's guided chain
starts from the same noise and, the sampler keeping the pool sample's draw at every kept step, follows it
but for guidance), and the network's features of those samples are kept; a target's candidates are then
the seeds whose unguided samples lie closest to it (squared L2, the distance guidance minimises). With the
first steps left to the prior (the ``pooled`` preset: forward-only below weight 0.25) guidance refines a
prior sample of (nearly) the right thing: on 54 emoji through ImageNet Lite0, 26 decodes showed their
target's kind of object against 14 with the candidates, at 202 evaluations instead of 642 (2 rounds a
step: a pool start needs fewer than the candidates' 4)
(docs/naturalness.md).

Both halves are cached under the probe cache folder: the images per (prior weights, timesteps), the features
per (images, network, layers); a pool of n is the first n of any larger one, so a larger pool draws only
the rest. Drawing is resumable (a stopped run keeps the chunks drawn), and the bundled priors ship their
pool for the presets' timesteps (``seed_pool.npz``), so only the features are computed on first use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.cache import keyed_path, load_arrays, save_arrays
from probe.diffusion.priors import Prior, weights_digest
from probe.diffusion.sampler import sample
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import UsageError
from probe.models.bundled import BUNDLED_DIR
from probe.targets import encode_images01

POOL_SEED = 3_000_017  # pool draw p is sampled from seed POOL_SEED + p, apart from the seeds users pick
CHUNK = 64  # pool images drawn (and saved) per sampler call
SHIPPED_POOL = "seed_pool.npz"  # a bundled prior's pool for the presets' chain (images + the key they match)


@dataclass
class SeedPool:
    """Seeds [P] of the prior's unguided samples and the network's features [P, D] of those samples."""

    seeds: np.ndarray
    features: np.ndarray

    def ranks(self, vectors: np.ndarray, metric: str = "l2") -> np.ndarray:
        """Pool indices [M, P] ordered by the squared L2 distance of their features to each vector [M, D], or
        for ``metric="cosine"`` by the cosine, highest first."""
        q = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
        r = torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32))
        if metric == "cosine":
            d = -torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T
        else:
            d = (q * q).sum(1, keepdim=True) + (r * r).sum(1)[None] - 2 * q @ r.T
        return torch.argsort(d, dim=1, stable=True).numpy()

    def assign(self, vectors: np.ndarray, samples: Sequence[int], n_samples: int, k: int,
               metric: str = "l2") -> list[list[int]]:
        """The ``k`` candidate seeds of each row: vector ``vectors[i]`` decoded as sample ``samples[i]`` of
        ``n_samples`` takes the pool ranks s, s + S, …, s + (k−1)·S of that vector's ranking (so the samples
        of one target share no seed, and each gets near-equal picks)."""
        check_pool_size(len(self.seeds), n_samples, k)
        order = self.ranks(vectors, metric)
        return [[int(self.seeds[order[i, s + j * n_samples]]) for j in range(k)] for i, s in enumerate(samples)]


def check_pool_size(pool: int, n_samples: int, k: int) -> None:
    """A pool of ``pool`` must give each of ``n_samples`` samples of a target ``k`` seeds of its own."""
    if n_samples * k > pool:
        raise UsageError(f"--pool {pool} is too small for {n_samples} sample(s) x {k} candidate(s) per target: "
                         f"it needs at least {n_samples * k}")


def pool_seeds(n: int) -> list[int]:
    return [POOL_SEED + p for p in range(n)]


def pool_key(prior: Prior, config: GuidanceConfig) -> dict:
    """What a pool's images depend on: the prior and its weights, the chain (timesteps, update rule), the seeds.
    Not the pool size: a pool of n is the first n images of any larger one."""
    return {"version": 2, "prior": prior.spec, "weights": weights_digest(prior.spec), "precision": prior.precision,
            "chain": dataclasses.asdict(config.baseline().chain), "seed": POOL_SEED}


def shipped_pool(prior: Prior, key: dict) -> np.ndarray | None:
    """The pool images a bundled prior ships (``seed_pool.npz`` in its folder) when they were drawn with
    ``key`` (the presets' chain, these weights): what lets the presets use a pool without drawing one."""
    if not str(prior.spec).startswith("bundled:"):
        return None
    z = load_arrays(BUNDLED_DIR / prior.spec.split(":", 1)[1] / SHIPPED_POOL)
    if z is None or json.loads(str(z["key"])) != json.loads(json.dumps(key)):
        return None
    return z["images"]


def stored_pool_images(prior: Prior, key: dict, cache: bool = True) -> np.ndarray:
    """The pool images for ``key`` that exist without drawing: the longer of the cached draw and the bundled
    prior's shipped pool (uint8 [m, C, H, W]; m = 0 when there is neither)."""
    found = [a for a in ((load_arrays(keyed_path("pool-images", key)) or {}).get("images") if cache else None,
                         shipped_pool(prior, key)) if a is not None]
    return max(found, key=len) if found else np.zeros((0, prior.channels, prior.image_size, prior.image_size),
                                                      np.uint8)


def pool_at_hand(prior: Prior, config: GuidanceConfig) -> bool:
    """Whether ``config.pool`` pool images exist without drawing any: in the cache (an earlier run drew them)
    or shipped with a bundled prior. What ``--schedule auto`` decides by (docs/method.md)."""
    return bool(config.pool) and len(stored_pool_images(prior, pool_key(prior, config))) >= config.pool


def pool_images(prior: Prior, config: GuidanceConfig, n: int, batch: int = CHUNK,
                on_progress: Callable[[int, int], None] | None = None, cache: bool = True) -> np.ndarray:
    """uint8 [n, C, H, W]: the prior's unguided samples of the pool seeds on ``config``'s timesteps and update
    rule (``config.baseline()``: exactly the first steps a guided chain of the same seed takes). Read from
    the cache or the bundled prior's shipped pool; what is missing is drawn, and kept chunk by chunk."""
    key = pool_key(prior, config)
    path = keyed_path("pool-images", key)
    images = stored_pool_images(prior, key, cache)
    seeds = pool_seeds(n)
    step = max(1, min(batch, CHUNK))
    chain = config.baseline()
    while len(images) < n:
        lo = len(images)
        res = sample(prior, None, None, seeds[lo:lo + step], chain)
        drawn = (res.final_images * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        images = np.concatenate([images, drawn])
        if cache:  # every chunk is kept: a stopped run goes on from here
            save_arrays(path, images=images)
        if on_progress is not None:
            on_progress(len(images), n)
    return images[:n]


def seed_pool(prior: Prior, encoder, config: GuidanceConfig, batch: int = CHUNK,
              on_progress: Callable[[int, int], None] | None = None, cache: bool = True) -> SeedPool:
    """The pool of ``config.pool`` seeds with ``encoder``'s features of their unguided samples (cached, and
    extended as the pool grows)."""
    n = config.pool
    path = keyed_path("pool-features", {**pool_key(prior, config), "encoder": encoder.record(),
                                        "layers": list(encoder.layers)})
    have = load_arrays(path) if cache else None
    features = have["features"] if have is not None else None
    if features is None or len(features) < n:
        images = pool_images(prior, config, n, batch, on_progress, cache)
        lo = 0 if features is None else len(features)
        parts = [] if features is None else [features]
        with torch.no_grad():
            for i in range(lo, n, CHUNK):
                x = torch.from_numpy(images[i:min(i + CHUNK, n)]).float() / 255.0
                parts.append(encode_images01(encoder, x).numpy().astype(np.float32))
                if on_progress is not None:  # featurising a shipped pool takes a minute for an ImageNet net
                    on_progress(min(i + CHUNK, n), n)
        features = np.concatenate(parts)
        if cache:
            save_arrays(path, features=features)
    return SeedPool(seeds=np.asarray(pool_seeds(n), dtype=np.int64), features=features[:n])


def pool_chain_seeds(prior: Prior, encoder, config: GuidanceConfig, vectors: np.ndarray, samples: Sequence[int],
                     n_samples: int, batch: int = CHUNK,
                     on_progress: Callable[[int, int], None] | None = None) -> list[list[int]] | None:
    """The sampler's ``chain_seeds`` for ``config`` (None without a pool): row i, target ``vectors[i]``
    decoded as sample ``samples[i]`` of ``n_samples``, gets its ``config.chains_at(0)`` pool picks."""
    if not config.pool or config.data_start:  # a data start's pool is the prior's data (probe.data_pool)
        return None
    pool = seed_pool(prior, encoder, config, batch, on_progress)
    return pool.assign(np.asarray(vectors), samples, n_samples, config.chains_at(0), config.pool_rank)


def write_shipped_pool(prior: Prior, config: GuidanceConfig, n: int, folder: Path,
                       on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Draw (or read from the cache) the first ``n`` pool images of ``prior`` on ``config``'s chain and write
    them, with the key they match, as ``folder/seed_pool.npz`` (compressed): what a bundled prior ships."""
    images = pool_images(prior, config, n, on_progress=on_progress)
    path = Path(folder) / SHIPPED_POOL
    np.savez_compressed(path, images=images, key=np.asarray(json.dumps(pool_key(prior, config))))
    return path
