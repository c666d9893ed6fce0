"""Independent judges of naturalness for decoded images (issue 10): do decodes look like the data?

Benchmarks-only: probe never imports this module and never guides with these judges, so their verdicts
are evidence the sampler was not optimised against. Scripts in ``benchmarks/`` import it as
``from naturalness import ...`` (their folder is on ``sys.path`` when run as ``python benchmarks/x.py``);
tests add ``benchmarks/`` to ``sys.path`` first. Weights live in ``benchmarks/judges/`` and are made by
``python recipes/train_judges.py`` (``judges.json`` records how, and each judge's test accuracy).

Fashion-MNIST judges, each named by ``Judges.predict``:

  mlp          an MLP (1024→512→256→64→10, ReLU, dropout) trained with shifts, flips, brightness /
               contrast jitter and noise. Different in kind from the guided ``bundled:fashion-cnn``
               (no convolutions, no weight sharing). Its 64-d penultimate layer is the feature space for
               Fréchet distances (``Judges.embed``).
  hog-logreg   HOG (skimage, 9 orientations, 4×4-pixel cells, 2×2-cell blocks, 1,764-d) → standardised →
               multinomial logistic regression (scikit-learn), stored as plain arrays.
  knn-pixels   5-nearest-neighbour vote on raw pixels (L2, [0, 1] scale) against all 60,000 training images;
               ties go to the class of the single nearest neighbour.

Images are accepted as ``uint8`` [N, 32, 32] (or [N, 1, 32, 32]) or float in [0, 1] [N, 1, 32, 32] /
[N, 32, 32], numpy or torch. Emoji (no classes in the data, categories from the npm package's
``emoji.json``): ``score_emoji`` on an independent HOG + colour-histogram space, PCA'd to 64-d on the
training emoji, plus pixel nearest-neighbour ratio and a HOG + colour logistic-regression category judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from probe.models.nets import FashionMLP
from probe.naturalness import denoising_error, off_manifold, realism_scores

JUDGE_DIR = Path(__file__).resolve().parent / "judges"
HOG_PARAMS = {"orientations": 9, "pixels_per_cell": (4, 4), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}
KNN_K = 5
JUDGE_NAMES = ("mlp", "hog-logreg", "knn-pixels")
COLOUR_BINS = 4  # per RGB channel -> 64-bin joint colour histogram for emoji
EMOJI_PCA_DIM = 64


# --------------------------------------------------------------------------------------------- inputs

def as_grey01(images) -> np.ndarray:
    """Grey images as float32 [N, 32, 32] in [0, 1] from uint8 or float01, with or without a channel axis."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 4:
        if x.shape[1] == 1:
            x = x[:, 0]
        elif x.shape[-1] == 1:
            x = x[..., 0]
        else:
            raise ValueError(f"expected grey images [N,1,H,W] or [N,H,W,1], got shape {x.shape}")
    if x.ndim != 3:
        raise ValueError(f"expected grey images [N,H,W], got shape {x.shape}")
    return _to01(x)


def as_rgb01(images) -> np.ndarray:
    """Colour images as float32 [N, H, W, 3] in [0, 1] from uint8 or float01, channels first or last."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"expected colour images [N,3,H,W] or [N,H,W,3], got shape {x.shape}")
    if x.shape[-1] != 3:
        x = x.transpose(0, 2, 3, 1)
    return _to01(x)


def _to01(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.clip(x.astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------- judges

class JudgeMLP(FashionMLP):
    """The neural judge: ``probe.models.nets.FashionMLP`` (a plain MLP on the 32×32 pixels with a 64-d
    bottleneck, the FD space) taking images in [0, 1] and normalising them itself (mean 0.5, std 0.5).
    The same weights ship as ``bundled:fashion-mlp``, the independent classifier of ``probe compare``;
    probe never guides with it."""

    @staticmethod
    def prepare(x01: torch.Tensor) -> torch.Tensor:
        return (x01 - 0.5) / 0.5

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.prepare(x01)))

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        return self.features(self.prepare(x01))


def hog_features(images01: np.ndarray) -> np.ndarray:
    """HOG descriptors [N, 1764] of grey [N, 32, 32] images in [0, 1] (``HOG_PARAMS``)."""
    from skimage.feature import hog

    return np.stack([hog(im, feature_vector=True, **HOG_PARAMS) for im in images01]).astype(np.float32)


def colour_histograms(rgb01: np.ndarray, bins: int = COLOUR_BINS) -> np.ndarray:
    """Joint RGB histograms [N, bins³], each summing to 1."""
    q = np.minimum((rgb01 * bins).astype(np.int64), bins - 1)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    idx = idx.reshape(len(rgb01), -1)
    out = np.zeros((len(rgb01), bins ** 3), dtype=np.float32)
    np.add.at(out, (np.repeat(np.arange(len(rgb01)), idx.shape[1]), idx.ravel()), 1.0)
    return out / idx.shape[1]


def emoji_raw_features(rgb01: np.ndarray) -> np.ndarray:
    """HOG of the grey image + joint colour histogram, the emoji space before standardising and PCA."""
    grey = rgb01 @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.concatenate([hog_features(grey), colour_histograms(rgb01)], axis=1)


def nearest_distances(queries: np.ndarray, reference: np.ndarray, k: int = 1, chunk: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-L2 distances [N, k] and indices [N, k] of each query's k nearest reference rows (ascending).

    ``queries`` [N, D] and ``reference`` [M, D] float32; computed as ‖q‖² + ‖r‖² − 2 q·r in chunks.
    """
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    ref_sq = (ref * ref).sum(1)
    dists, idxs = [], []
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32))
        d = (q * q).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * q @ ref.T
        val, idx = torch.topk(d, k, dim=1, largest=False)
        dists.append(val.clamp_min(0).sqrt().numpy())
        idxs.append(idx.numpy())
    return np.concatenate(dists), np.concatenate(idxs)


@functools.cache
def fashion_train01() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train images as float32 [60000, 1024] in [0, 1] and their labels (cached)."""
    from probe.datasets import fashion_mnist

    images, labels = fashion_mnist("train")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


@dataclass
class Judges:
    """The three Fashion-MNIST judges, loaded from ``benchmarks/judges/``."""

    mlp: JudgeMLP
    hog_coef: np.ndarray       # [10, 1764]
    hog_intercept: np.ndarray  # [10]
    hog_mean: np.ndarray       # standardiser of the HOG features
    hog_scale: np.ndarray
    meta: dict

    @torch.no_grad()
    def embed(self, images) -> np.ndarray:
        """The MLP judge's 64-d penultimate features [N, 64] (float64), the space for Fréchet distances."""
        x = torch.from_numpy(as_grey01(images))[:, None]
        return np.concatenate([self.mlp.embed(x[i:i + 1000]).double().numpy() for i in range(0, len(x), 1000)])

    @torch.no_grad()
    def predict(self, images) -> dict[str, np.ndarray]:
        """Predicted class per image by each judge: {"mlp", "hog-logreg", "knn-pixels"} -> int64 [N]."""
        x = as_grey01(images)
        t = torch.from_numpy(x)[:, None]
        mlp = np.concatenate([self.mlp(t[i:i + 1000]).argmax(1).numpy() for i in range(0, len(t), 1000)])
        h = (hog_features(x) - self.hog_mean) / self.hog_scale
        hog = (h @ self.hog_coef.T + self.hog_intercept).argmax(1)
        return {"mlp": mlp.astype(np.int64), "hog-logreg": hog.astype(np.int64),
                "knn-pixels": knn_predict(x.reshape(len(x), -1))}


def knn_predict(flat01: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """k-NN vote on raw pixels against the 60,000 training images; a tie goes to the nearest neighbour's class."""
    train, labels = fashion_train01()
    _, idx = nearest_distances(flat01, train, k=k)
    votes = labels[idx]  # [N, k], nearest first
    out = np.empty(len(votes), dtype=np.int64)
    for i, v in enumerate(votes):
        counts = np.bincount(v, minlength=10)
        best = np.flatnonzero(counts == counts.max())
        out[i] = v[0] if v[0] in best else next(c for c in v if c in best)
    return out


@functools.cache
def load_judges(folder: str | None = None) -> Judges:
    """Load the committed judges (cached per folder); ``recipes/train_judges.py`` makes them."""
    from safetensors.torch import load_file

    root = Path(folder) if folder else JUDGE_DIR
    meta = json.loads((root / "judges.json").read_text())
    mlp = JudgeMLP(**meta["mlp"]["arch"])
    mlp.load_state_dict({k: v.float() for k, v in load_file(root / "mlp.safetensors").items()})
    mlp.eval()
    with np.load(root / "hog_logreg.npz") as z:
        arrays = {k: z[k].astype(np.float32) for k in ("coef", "intercept", "mean", "scale")}
    return Judges(mlp, arrays["coef"], arrays["intercept"], arrays["mean"], arrays["scale"], meta)


def judge_accuracy(images, labels, judges: Judges | None = None) -> dict[str, float]:
    """Share of images each judge assigns to ``labels``, and their ``mean`` over judges."""
    judges = judges or load_judges()
    labels = np.asarray(labels)
    preds = judges.predict(images)
    out = {name: float((p == labels).mean()) for name, p in preds.items()}
    out["mean"] = float(np.mean([out[n] for n in JUDGE_NAMES]))
    return out


# ------------------------------------------------------------------------------------ Fréchet distance

def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` [N, D] and ``feats_b`` [M, D].

    ‖μa − μb‖² + tr Ca + tr Cb − 2 tr (Ca Cb)^½, with tr (Ca Cb)^½ computed as the trace of the square
    root of the symmetric PSD matrix Ca^½ Cb Ca^½ (same eigenvalues as Ca Cb) by ``scipy.linalg.eigh``,
    negative round-off eigenvalues clipped to 0. Unlike ``sqrtm(Ca @ Cb)`` this stays real and accurate
    when N < D makes the covariances singular, which the small decode sets here do. Result ≥ 0.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    sa = _psd_sqrt(ca)
    w = linalg.eigvalsh(sa @ cb @ sa)
    tr_sqrt = np.sqrt(np.clip(w, 0.0, None)).sum()
    return float(max(mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * tr_sqrt, 0.0))


def fd_report(decoded, real_heldout, unguided=None, embed=None, repeats: int = 10, seed: int = 0,
              dim: int | str = "auto") -> dict:
    """Fréchet distances at one matched sample size n, averaged over ``repeats`` random subsamples.

    FD is biased upward by small N (a finite sample's covariance is noisy), so comparing an FD on 12
    decodes with one on 10,000 real images would mislead. Here every FD uses n images on both sides,
    n = min(len(decoded), len(unguided), len(real_heldout) // 2): per repeat, decoded and unguided are
    subsampled to n (all of them when they have n), and the real set gives one subsample of n for
    FD(decoded, real) and FD(unguided, real) and two disjoint ones for the real-vs-real floor.

    Dimension: with n well below the feature dimension D the covariance terms are mostly sampling noise;
    measured on emoji at n = 12 in 64-d, 12 identical grey squares scored a *lower* FD to real emoji than
    12 real emoji did. So the main figures are taken in the top ``dim`` principal components of the real
    features (PCA fitted on all of ``real_heldout``); ``dim="auto"`` is min(D, max(2, n // 4)) (n = 12:
    3; n = 32: 8; n ≥ 4D: all of D). The full-D figures are kept under ``full_dim``.
    ``embed`` maps images to features (default: the MLP judge's 64-d penultimate layer); features
    [N, D] may be passed instead of images by giving ``embed=lambda f: f``.
    Returns means, standard deviations over repeats, n, dim, and ratios to the unguided and real figures.
    """
    embed = embed or load_judges().embed
    fd_dec = np.asarray(embed(decoded), dtype=np.float64)
    fr = np.asarray(embed(real_heldout), dtype=np.float64)
    fu = None if unguided is None else np.asarray(embed(unguided), dtype=np.float64)
    n = min(len(fd_dec), len(fr) // 2, len(fu) if fu is not None else len(fd_dec))
    if n < 2:
        raise ValueError(f"Fréchet distance needs at least 2 images per set, got n={n}")
    full_d = fr.shape[1]
    k = min(full_d, max(2, n // 4)) if dim == "auto" else min(int(dim), full_d)
    out = _fd_rows(fd_dec, fr, fu, n, repeats, seed)
    if k < full_d:
        mu = fr.mean(0)
        _, _, vt = linalg.svd(fr - mu, full_matrices=False)
        proj = vt[:k].T
        full = out
        out = _fd_rows((fd_dec - mu) @ proj, (fr - mu) @ proj, None if fu is None else (fu - mu) @ proj, n,
                       repeats, seed)
        out["full_dim"] = {key: v for key, v in full.items() if key not in ("n", "repeats")}
    out["dim"] = int(k)
    out["feature_dim"] = int(full_d)
    return out


def _fd_rows(fd_dec: np.ndarray, fr: np.ndarray, fu: np.ndarray | None, n: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {"decoded_vs_real": [], "unguided_vs_real": [], "real_vs_real": []}
    for _ in range(repeats):
        perm = rng.permutation(len(fr))
        ra, rb = fr[perm[:n]], fr[perm[n:2 * n]]
        d = fd_dec[rng.permutation(len(fd_dec))[:n]]
        rows["decoded_vs_real"].append(frechet_distance(d, ra))
        rows["real_vs_real"].append(frechet_distance(ra, rb))
        if fu is not None:
            rows["unguided_vs_real"].append(frechet_distance(fu[rng.permutation(len(fu))[:n]], ra))
    out: dict = {"n": int(n), "repeats": repeats}
    for key, vals in rows.items():
        if vals:
            out[key] = float(np.mean(vals))
            out[key + "_std"] = float(np.std(vals))
    if "unguided_vs_real" in out and out["unguided_vs_real"] > 0:
        out["decoded_over_unguided"] = out["decoded_vs_real"] / out["unguided_vs_real"]
    if out["real_vs_real"] > 0:
        out["decoded_over_real_vs_real"] = out["decoded_vs_real"] / out["real_vs_real"]
    return out


# ------------------------------------------------------------------------------ nearest training image

_REAL_NN: dict[tuple[str, str], np.ndarray] = {}


def nn_ratio(decoded, real_heldout, train=None, reference_n: int = 500, seed: int = 0) -> dict:
    """Mean pixel-L2 distance of decoded images to their nearest training image over the same for real ones.

    Distances are on [0, 1] pixels (grey [N, 1024] or colour [N, 3072] flattened). ``train`` defaults to
    the 60,000 Fashion-MNIST training images; pass the training emoji for emoji. The real reference uses
    a seeded subsample of at most ``reference_n`` held-out images (a mean over 500 is precise to a few
    per cent and keeps this to seconds). Returns ``ratio`` (1 = as close to the training set as real
    held-out images; ≫ 1 off the data; ≪ 1 copies), both means and the per-image distances.
    """
    dec, real = _flat01(decoded), _flat01(real_heldout)
    ref = fashion_train01()[0] if train is None else _flat01(train)
    if len(real) > reference_n:
        real = real[np.random.default_rng(seed).choice(len(real), reference_n, replace=False)]
    d_dec = nearest_distances(dec, ref)[0][:, 0]
    key = (hashlib.blake2b(real.tobytes(), digest_size=16).hexdigest(),
           "fashion-train" if train is None else hashlib.blake2b(ref.tobytes(), digest_size=16).hexdigest())
    if key not in _REAL_NN:  # the same real reference is scored once per process (one per preset otherwise)
        _REAL_NN[key] = nearest_distances(real, ref)[0][:, 0]
    d_real = _REAL_NN[key]
    return {"ratio": float(d_dec.mean() / d_real.mean()), "decoded_mean": float(d_dec.mean()),
            "real_mean": float(d_real.mean()), "decoded_distances": d_dec.tolist(),
            "real_distances": d_real.tolist()}


def _flat01(images) -> np.ndarray:
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    colour = x.ndim == 4 and 3 in (x.shape[1], x.shape[-1])
    x = as_rgb01(x) if colour else as_grey01(x)
    return x.reshape(len(x), -1)


# ------------------------------------------------------------------------------------------ one call

def score_images(images, labels, targets=None, unguided=None, real_heldout=None, exclude_indices=None,
                 judges: Judges | None = None, repeats: int = 10, seed: int = 0) -> dict:
    """Every naturalness figure for decoded Fashion-MNIST images in one dict.

    images         decodes, uint8 [N, 32, 32] or float [N, 1, 32, 32] in [0, 1]
    labels         the true class of each decode's target image [N]
    targets        the real target images (same order): gives the judges' accuracy on them, the
                   reference for ``judge_accuracy_ratio`` (decodes / real targets, per judge and mean)
    unguided       unguided prior samples (e.g. the same seeds): FD and NN-ratio reference
    real_heldout   real held-out images for FD and NN ratio; default the Fashion-MNIST test split minus
                   ``exclude_indices`` (pass the target indices so targets are not their own reference)
    Keys: n, judge_accuracy, judge_accuracy_real_targets, judge_accuracy_ratio, fd (``fd_report``),
    nn (``nn_ratio`` summary), unguided (its judge accuracy against ``labels`` and NN ratio), per_image
    (judge labels, number of judges correct, NN distance).
    """
    judges = judges or load_judges()
    labels = np.asarray(labels, dtype=np.int64)
    x = as_grey01(images)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels")
    if real_heldout is None:
        from probe.datasets import fashion_mnist

        real_heldout = fashion_mnist("test")[0]
        if exclude_indices is not None:
            real_heldout = np.delete(real_heldout, np.asarray(exclude_indices, dtype=np.int64), axis=0)
    preds = judges.predict(x)
    acc = {name: float((p == labels).mean()) for name, p in preds.items()}
    acc["mean"] = float(np.mean([acc[n] for n in JUDGE_NAMES]))
    nn = nn_ratio(x, real_heldout, seed=seed)
    out: dict = {
        "n": len(x),
        "judges": list(JUDGE_NAMES),
        "judge_accuracy": acc,
        "fd": fd_report(x, real_heldout, unguided, embed=judges.embed, repeats=repeats, seed=seed),
        "nn": {k: nn[k] for k in ("ratio", "decoded_mean", "real_mean")},
        "per_image": {
            "judge_labels": {k: v.tolist() for k, v in preds.items()},
            "judges_correct": sum((p == labels).astype(int) for p in preds.values()).tolist(),
            "nn_distance": nn["decoded_distances"],
        },
    }
    if targets is not None:
        real_acc = judge_accuracy(targets, labels, judges)
        out["judge_accuracy_real_targets"] = real_acc
        out["judge_accuracy_ratio"] = {k: (acc[k] / real_acc[k] if real_acc[k] > 0 else float("nan"))
                                       for k in acc}
    if unguided is not None:
        out["unguided"] = {"nn_ratio": nn_ratio(unguided, real_heldout, seed=seed)["ratio"]}
        if len(as_grey01(unguided)) == len(labels):
            out["unguided"]["judge_accuracy"] = judge_accuracy(unguided, labels, judges)
    return out


# ---------------------------------------------------------------------------------------------- emoji

@dataclass
class EmojiSpace:
    """Standardised HOG + colour histogram → PCA(64) space and a category logistic regression, for emoji."""

    mean: np.ndarray
    scale: np.ndarray
    pca_mean: np.ndarray
    components: np.ndarray   # [64, D]
    cat_coef: np.ndarray     # [C, D]
    cat_intercept: np.ndarray
    categories: list[str]

    def standardise(self, images) -> np.ndarray:
        return (emoji_raw_features(as_rgb01(images)) - self.mean) / self.scale

    def embed(self, images) -> np.ndarray:
        return ((self.standardise(images) - self.pca_mean) @ self.components.T).astype(np.float64)

    def predict_category(self, images) -> np.ndarray:
        return (self.standardise(images) @ self.cat_coef.T + self.cat_intercept).argmax(1).astype(np.int64)


@functools.cache
def load_emoji_space(folder: str | None = None) -> EmojiSpace:
    root = Path(folder) if folder else JUDGE_DIR
    meta = json.loads((root / "judges.json").read_text())
    with np.load(root / "emoji_space.npz") as z:
        a = {k: z[k].astype(np.float32) for k in ("mean", "scale", "pca_mean", "components", "cat_coef",
                                                   "cat_intercept")}
    return EmojiSpace(**a, categories=list(meta["emoji"]["categories"]))


def emoji_files(split: str) -> list[Path]:
    """The PNG files behind ``probe.datasets.emoji(split)``, in the same order (same split rule)."""
    from probe.datasets import emoji_dir

    files = sorted(emoji_dir().glob("*.png"))
    return [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]


@functools.cache
def emoji_category_names() -> tuple[str, ...]:
    return tuple(load_emoji_space().categories)


def emoji_categories(split: str, names: tuple[str, ...] | None = None) -> np.ndarray:
    """Category index per image of ``probe.datasets.emoji(split)`` from the package's ``emoji.json``.

    Skin-tone variants take their base emoji's category; an image the metadata does not list gets -1.
    """
    from probe.datasets import emoji_dir

    names = names or emoji_category_names()
    meta = json.loads((emoji_dir().parents[2] / "emoji.json").read_text())
    by_file: dict[str, str] = {}
    for e in meta:
        by_file[e["image"]] = e["category"]
        for var in (e.get("skin_variations") or {}).values():
            by_file[var["image"]] = e["category"]
    index = {c: i for i, c in enumerate(names)}
    return np.array([index.get(by_file.get(f.name, ""), -1) for f in emoji_files(split)], dtype=np.int64)


@functools.cache
def _emoji_split(split: str) -> np.ndarray:
    from probe.datasets import emoji

    return emoji(split)


def score_emoji(images, categories=None, targets=None, unguided=None, real_heldout=None, exclude_indices=None,
                repeats: int = 10, seed: int = 0) -> dict:
    """Naturalness of decoded emoji: FD on the emoji space, pixel NN ratio, and category accuracy.

    images        decodes, uint8 [N, 32, 32, 3] or float [N, 3, 32, 32] in [0, 1]
    categories    the targets' category indices (``emoji_categories("test")[target_indices]``), optional
    targets       the real target emoji: the category judge's accuracy on them, for the ratio
    real_heldout  default the held-out emoji (``emoji("test")``, 378) minus ``exclude_indices``
    The NN ratio uses the training emoji as the training set.
    """
    space = load_emoji_space()
    x = as_rgb01(images)
    if real_heldout is None:
        real_heldout = _emoji_split("test")
        if exclude_indices is not None:
            real_heldout = np.delete(real_heldout, np.asarray(exclude_indices, dtype=np.int64), axis=0)
    train = _emoji_split("train")
    nn = nn_ratio(x, real_heldout, train=train, seed=seed)
    out: dict = {
        "n": len(x),
        "fd": fd_report(x, real_heldout, unguided, embed=space.embed, repeats=repeats, seed=seed),
        "nn": {k: nn[k] for k in ("ratio", "decoded_mean", "real_mean")},
        "per_image": {"nn_distance": nn["decoded_distances"]},
    }
    if unguided is not None:
        out["unguided"] = {"nn_ratio": nn_ratio(unguided, real_heldout, train=train, seed=seed)["ratio"]}
    if categories is not None:
        cats = np.asarray(categories, dtype=np.int64)
        pred = space.predict_category(x)
        out["category_accuracy"] = float((pred == cats).mean())
        out["per_image"]["category"] = pred.tolist()
        if targets is not None:
            real = float((space.predict_category(targets) == cats).mean())
            out["category_accuracy_real_targets"] = real
            out["category_accuracy_ratio"] = out["category_accuracy"] / real if real > 0 else float("nan")
    return out


def canonical_u8(u8: np.ndarray) -> np.ndarray:
    """uint8 images as the judges take them: [N, H, W] (grey) or [N, H, W, 3] (colour), from NCHW too."""
    if u8.ndim == 4 and u8.shape[1] in (1, 3) and u8.shape[-1] not in (1, 3):
        u8 = u8.transpose(0, 2, 3, 1)
    return u8[..., 0] if u8.ndim == 4 and u8.shape[-1] == 1 else u8


def images01(u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] (grey) or [N, H, W, 3] (colour) -> float [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(canonical_u8(u8))).float() / 255
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)


def naturalness_figures(images: np.ndarray, labels: np.ndarray | None, targets: np.ndarray, index: np.ndarray,
                        unguided: np.ndarray, prior, reference_error: np.ndarray, judges=None) -> dict:
    """Every naturalness figure of one preset's decodes (uint8, the target i decoded with seed i).

    Fashion-MNIST (``labels`` given): the judges, FD on the MLP judge's features, NN ratio; emoji
    (``labels`` None): FD on the emoji space and NN ratio (``naturalness.score_emoji``). Both: probe's
    realism score relative to the unguided samples' ``reference_error``."""
    images, unguided = canonical_u8(images), canonical_u8(unguided)
    real = realism_scores(denoising_error(prior, images01(images)), reference_error)
    out = {"realism_median": float(np.median(real)), "realism_mean": float(np.mean(real)),
           "off_manifold_share": float(off_manifold(real).mean()), "realism": real.tolist()}
    if labels is None:  # emoji: the category judge (HOG + colour logistic regression) in place of classes
        categories = emoji_categories("test")[np.asarray(index, dtype=np.int64)]
        sc = score_emoji(images, categories=categories, targets=targets, unguided=unguided, exclude_indices=index)
        out.update(judge_ratio=sc.get("category_accuracy_ratio"),
                   judge_accuracy={"category": sc.get("category_accuracy")},
                   judge_accuracy_real_targets={"category": sc.get("category_accuracy_real_targets")})
    else:
        sc = score_images(images, labels, targets=targets, unguided=unguided, exclude_indices=index,
                          judges=judges)
        out.update(judge_ratio=sc["judge_accuracy_ratio"]["mean"], judge_accuracy=sc["judge_accuracy"],
                   judge_accuracy_real_targets=sc["judge_accuracy_real_targets"],
                   judges_correct=sc["per_image"]["judges_correct"])
    out.update(fd=sc["fd"], fd_ratio=sc["fd"].get("decoded_over_unguided"), nn_ratio=sc["nn"]["ratio"],
               nn_distance=sc["per_image"]["nn_distance"])
    return out
