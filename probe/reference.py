"""Real images of a prior's own data, seen by the decoded network: evidence a decode is measured against.

A decode is evidence about a feature only if it *reached* the feature and looks like the prior's data.
Realism (``probe.naturalness``) measures the second, but only one-sidedly: smooth tiles that a prior
draws when guided toward a feature outside its domain (a photo's ImageNet feature through the emoji
prior) are easy to denoise and score *below* 1, so the realism flag passes them. This module supplies
what both missing checks need: the decoded network's features of real images from the prior's training
data (``ReferenceSet``), per (prior, encoder, layers), computed once and cached.

Two rules read it:

``not_reached``  a decode whose feature lies farther from the target (squared L2, the distance guidance
                 minimises) than the nearest real reference image does is flagged whatever its realism:
                 the prior's own data then holds better evidence about the feature than the decode.
``domain``       a target whose mean cosine distance to its 5 nearest reference images exceeds the 99th
                 percentile of the reference images' own (leave-one-out) 5-NN cosine distances is outside
                 the prior's domain: its decodes cannot show what the feature encodes (``probe decode``
                 warns once). Measured on emoji-ddpm + efficientnet_lite0: the 378 held-out emoji score
                 median 0.37, 99th percentile 0.94, max 1.28 (2 above 1); 15 offline photos (scikit-image,
                 scikit-learn samples) 1.42–1.88, all above 1 (AUC 1.000). Squared L2 separates less
                 (photos from 1.06, AUC 0.999): photo features differ from emoji features in direction
                 more than in length.

Where the reference comes from: the bundled priors' training sets (``REFERENCE_DATA``: 1,024 images drawn
with a fixed seed; the emoji train split from the npm package, Fashion-MNIST train from Debian). A prior
without a known training set has no reference and both rules answer "unknown" (never flag); pass images
to :func:`reference_set` to give it one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.cache import keyed_path, load_arrays, save_arrays

REFERENCE_N = 1024  # reference images per (prior, encoder): 1,024 of the training set, seeded
REFERENCE_SEED = 0
DOMAIN_QUANTILE = 0.99  # a target beyond this quantile of in-domain NN distances is out of the prior's domain
DOMAIN_K = 5  # neighbours averaged by the domain check (cosine distance)


def _emoji_train() -> np.ndarray:
    from probe.datasets import emoji

    return emoji("train")  # uint8 [N, 32, 32, 3]


def _fashion_train() -> np.ndarray:
    from probe.datasets import fashion_mnist

    return fashion_mnist("train")[0][:, None]  # uint8 [N, 1, 32, 32]


#: prior spec -> (loader of its training images as uint8, a description for manifests and messages)
REFERENCE_DATA: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "bundled:emoji-ddpm": (_emoji_train, "emoji-ddpm's training emoji (npm emoji-datasource-google)"),
    "bundled:fashion-ddpm": (_fashion_train, "fashion-ddpm's training images (Fashion-MNIST train)"),
}


@functools.lru_cache(maxsize=2)
def _read(load: Callable[[], np.ndarray]) -> np.ndarray | None:
    try:
        data = load()
    except Exception:  # noqa: BLE001 - the dataset is not installed: no reference, no data start
        return None
    if data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data)


def training_images(prior_spec: str) -> np.ndarray | None:
    """The prior's training images, uint8 [N, C, H, W], read once per process (the reference set and the data
    start, ``probe.data_pool``, both draw from them); None where probe does not know them or they are not
    installed."""
    entry = REFERENCE_DATA.get(prior_spec)
    return None if entry is None else _read(entry[0])


@dataclass
class ReferenceSet:
    """Features [N, D] of real images of a prior's data, and their in-domain nearest-neighbour spread."""

    features: np.ndarray
    source: str
    #: each reference image's mean cosine distance to its ``DOMAIN_K`` nearest *other* reference images
    self_knn_cos: np.ndarray

    @property
    def domain_radius(self) -> float:
        """The ``DOMAIN_QUANTILE`` of the in-domain k-NN cosine distances: how far real data lies from its
        neighbours."""
        return float(np.quantile(self.self_knn_cos, DOMAIN_QUANTILE))

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        """Squared L2 distance of each vector [M, D] to its nearest reference feature other than itself (a
        target that is a reference image's own feature is compared with the next real image)."""
        q = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        return nearest_sq(q, self.features, exclude_exact=True)

    def domain_ratio(self, vectors: np.ndarray) -> np.ndarray:
        """k-NN cosine distance of each target over :attr:`domain_radius`: > 1 means outside the domain."""
        q = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        return knn_cosine(q, self.features) / max(self.domain_radius, 1e-12)


def nearest_sq(queries: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
               chunk: int = 512, exclude_exact: bool = False) -> np.ndarray:
    """Squared L2 distance of each query row to its nearest reference row (itself excluded if asked: by
    position with ``exclude_self``, or any row equal to it up to float rounding with ``exclude_exact``)."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    r = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    rn = (r * r).sum(1)
    out = []
    for lo in range(0, len(q), chunk):
        qc = q[lo:lo + chunk]
        d = (qc * qc).sum(1, keepdim=True) + rn[None] - 2 * qc @ r.T
        if exclude_self:
            idx = torch.arange(lo, lo + len(qc))
            d[torch.arange(len(qc)), idx] = float("inf")
        if exclude_exact:
            d[d <= 1e-6 * (qc * qc).sum(1, keepdim=True).clamp_min(1e-12)] = float("inf")
        out.append(d.clamp_min(0).min(1).values)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def knn_cosine(queries: np.ndarray, reference: np.ndarray, k: int = DOMAIN_K, exclude_self: bool = False
               ) -> np.ndarray:
    """Mean cosine distance (1 − cos) of each query row to its ``k`` nearest reference rows."""
    q = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)), dim=1)
    r = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)), dim=1)
    d = 1 - q @ r.T
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    k = max(1, min(k, d.shape[1] - int(exclude_self)))
    return d.topk(k, dim=1, largest=False).values.mean(1).clamp_min(0).numpy().astype(np.float64)


def build_reference(features: np.ndarray, source: str) -> ReferenceSet:
    feats = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    return ReferenceSet(features=feats, source=source, self_knn_cos=knn_cosine(feats, feats, exclude_self=True))


def _cache_path(prior_spec: str, encoder, n: int) -> Path:
    return keyed_path("reference", {"version": 2, "prior": prior_spec, "encoder": encoder.record(),
                                    "layers": list(encoder.layers), "n": n, "seed": REFERENCE_SEED})


@torch.no_grad()
def encode_uint8(encoder, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] / [N, C, H, W] images -> the encoder's concatenated features [N, D] (as decode)."""
    from probe.targets import encode_images01

    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    out = [encode_images01(encoder, x[i:i + batch].float() / 255.0) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def reference_set(prior_spec: str, encoder, images: np.ndarray | None = None, n: int = REFERENCE_N,
                  cache: bool = True) -> ReferenceSet | None:
    """The reference set of ``prior_spec`` seen by ``encoder`` (None when the prior's data is unknown and no
    ``images`` are given). Features of the bundled priors' data are cached under the probe cache folder."""
    if images is None:
        entry = REFERENCE_DATA.get(prior_spec)
        if entry is None:
            return None
        source = entry[1]
        path = _cache_path(prior_spec, encoder, n)
        z = load_arrays(path) if cache else None
        if z is not None:
            return ReferenceSet(z["features"], str(z["source"]), z["self_knn_cos"])
        data = training_images(prior_spec)
        if data is None:  # the dataset is not installed: no reference, no flag
            return None
        pick = np.sort(np.random.default_rng(REFERENCE_SEED).permutation(len(data))[:n])
        ref = build_reference(encode_uint8(encoder, data[pick]), f"{len(pick)} of {source}")
        if cache:
            save_arrays(path, features=ref.features, source=np.asarray(ref.source), self_knn_cos=ref.self_knn_cos)
        return ref
    return build_reference(encode_uint8(encoder, images), f"{len(images)} given images")


def not_reached(best_distance: np.ndarray, target_nn: np.ndarray) -> np.ndarray:
    """A decode did not reach its feature when the nearest real reference image is closer to the target
    than the decode's feature (both squared L2). NaN distances never flag."""
    d = np.asarray(best_distance, dtype=np.float64)
    r = np.asarray(target_nn, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(r)
    return np.where(ok, d > r, False)


def reach_ratio(best_distance: np.ndarray, target_nn: np.ndarray) -> np.ndarray:
    """best distance / the target's nearest real reference distance (> 1: not reached)."""
    return np.asarray(best_distance, dtype=np.float64) / np.maximum(np.asarray(target_nn, dtype=np.float64), 1e-12)


def out_of_domain(ratio: float | np.ndarray) -> np.ndarray:
    return np.asarray(ratio, dtype=np.float64) > 1.0


def domain_message(prior_spec: str, n_out: int, n_targets: int, ratio: float, ref: ReferenceSet) -> str:
    """The one warning line ``probe decode`` prints for targets outside the prior's domain."""
    return (f"{n_out} of {n_targets} target(s) lie outside {prior_spec}'s domain (up to {ratio:.1f}x farther, "
            f"in cosine, from {ref.source} than 99% of them lie from each other): the decodes cannot look like "
            f"the target and are flagged; decode with --prior set to a prior trained on such images (e.g. photos)")


@dataclass
class TargetChecks:
    """Per target: its nearest real reference distance (squared L2) and its domain ratio."""

    nearest: np.ndarray
    domain: np.ndarray

    def fields(self, target_index: int, best_distance: float) -> dict:
        """The manifest fields of one decode of target ``target_index`` (see SampleRecord)."""
        nn, dom = float(self.nearest[target_index]), float(self.domain[target_index])
        ratio = float(reach_ratio(np.array([best_distance]), np.array([nn]))[0])
        return {"reach_ratio": ratio, "not_reached": bool(not_reached(np.array([best_distance]), np.array([nn]))[0]),
                "domain_ratio": dom, "out_of_domain": bool(dom > 1.0)}


def target_checks(prior_spec: str, encoder, targets, on_warning: Callable[[str], None] | None = None,
                  reference: ReferenceSet | None = None) -> TargetChecks | None:
    """The reach and domain checks of ``targets`` (anything with ``.vector``) against the prior's reference
    set (None when it has none); one warning line through ``on_warning`` when targets lie outside the
    prior's domain."""
    ref = reference if reference is not None else reference_set(prior_spec, encoder)
    if ref is None:
        return None
    vectors = np.stack([np.asarray(t.vector, dtype=np.float32) for t in targets])
    checks = TargetChecks(nearest=ref.nearest(vectors), domain=ref.domain_ratio(vectors))
    out = out_of_domain(checks.domain)
    if out.any() and on_warning is not None:
        on_warning(domain_message(prior_spec, int(out.sum()), len(targets), float(checks.domain[out].max()), ref))
    return checks
