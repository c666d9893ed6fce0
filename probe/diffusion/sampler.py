"""The guided decoder of arXiv 2509.07936 (docs/method.md), readable top to bottom.

Given target features f* and a network f, draw z_T ~ N(0, I) and walk the prior's reverse chain. At
each timestep t, K times (self-recurrence):

  1. ε = ε_θ(z_t, t) with z_t requiring grad
  2. ẑ0 = (z_t − √(1−ᾱ_t)·ε)/√ᾱ_t
  3. x̂0 = D(ẑ0)                                   (identity for pixel priors, VAE decoder for latent ones)
  4. L = ‖f(q(x̂0)) − f*‖²                         q: [0,1], 8-bit rounding (straight-through), resize,
                                                    rounding again — the PNG a user would save
     record x̂0 as best if its distance is the smallest so far
  5. g = −∂L/∂z_t
  6. g ← g·‖ε‖/‖g‖                                 per sample
  7. g ← clamp(g, mean(g) ± τ·std(g))              per sample (gradient thresholding, τ > 0)
  8. ε' = ε − w·g
  9. ẑ0' from ε'; decode without grad; record as best if better
 10. step to z_{t_prev} with ε'' = noise implied by ẑ0' (DDPM ancestral step, or DDIM for strided chains)
 11. if this is not the K-th round, re-noise back to t: z_t = √(ᾱ_t/ᾱ_prev)·z_{t_prev} + √(1 − ᾱ_t/ᾱ_prev)·n
The first ``early_steps`` timesteps use ``early_rounds`` rounds (early step emphasis). At the last
timestep the chain's output is ẑ0'.

probe's generalisations (docs/method.md): a batch holds independent chains (normalisation and
thresholding per sample); strided timesteps use the posterior of the strided chain; a sample may stop
early on patience or on reaching a distance bound; every sample draws all of its noise from its own
CPU generator, so its chain does not depend on what else is in the batch, and equal seeds give equal
images. The sampler knows nothing about files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from probe.diffusion.priors import Prior
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import InputError, UsageError
from probe.heap import keep_freed_memory
from probe.models.encoder import Encoder

StepCallback = Callable[[int, int, torch.Tensor], None]
EOT_SEED_OFFSET = 1_000_003  # a chain's transformation draws: its own generator, apart from its noise
RECURRENCE_SEED_OFFSET = 2_000_029  # with a seed pool, the noise of rounds a step does not keep (its own generator)
CANDIDATE_SEED_OFFSET = 7_919_993  # candidate k of seed s draws its noise from seed s + k·offset


# --------------------------------------------------------------------------------------------------------
# Building blocks (each tested on its own)
# --------------------------------------------------------------------------------------------------------
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity gradient in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def to_unit_image(x: torch.Tensor, quantize: bool, clamp: str = "straight-through") -> torch.Tensor:
    """Prior output in [−1, 1] -> [0, 1] image, clamped like a saved PNG, optionally on the 8-bit grid.

    ``clamp`` picks the clamp: "straight-through" (default) clamps the forward value (the saved PNG's)
    and passes the gradient of saturated pixels on as if unclamped; "hard" gives them none; "none" does
    not clamp at all, as the official code (values outside [0, 1] reach the network). At the first,
    noisiest steps x̂0 is far outside [−1, 1] almost everywhere, so a hard clamp zeroes the whole
    gradient and wastes the early-step emphasis rounds (measured in benchmarks/decode_fidelity.py).
    """
    x01 = (x + 1) / 2
    if clamp == "hard":
        x01 = x01.clamp(0, 1)
    elif clamp != "none":
        x01 = x01 + (x01.clamp(0, 1) - x01).detach()
    return round_ste(x01 * 255) / 255 if quantize else x01


def network_input(encoder: Encoder, img01: torch.Tensor, quantize: bool, whole: bool = False) -> torch.Tensor:
    """The (8-bit) decoded image as the network sees it in the loss.

    ``whole``: the official loss path (``GuidanceConfig.loss_resize = "whole"``): the whole image resized
    bicubic without crop, antialias or clamp, then rounded to 8 bits again (straight-through). Otherwise the
    encoder's eval transform and nothing after it, exactly as extracting the saved PNG gives it: the loss
    *is* the saved image's distance, so the sampler reads it instead of a second forward pass per round.
    """
    if not whole:
        return encoder.resize(img01)
    x = encoder.preprocess.resize_whole(img01)
    return round_ste(x * 255) / 255 if quantize else x


def concat_features(encoder: Encoder, x_resized: torch.Tensor) -> torch.Tensor:
    """All requested layers of one forward pass, concatenated in ``encoder.layers`` order, float32.

    A squared distance to a concatenated target is the sum of the per-layer squared distances.
    """
    feats = encoder.forward_resized(x_resized)
    return torch.cat([feats[name].float().flatten(1) for name in encoder.layers], dim=1)


def squared_distance(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖f − f*‖² per sample, in float32."""
    return (features.float() - target.float()).pow(2).sum(dim=1)


def loss_path_distance(encoder: Encoder, img01: torch.Tensor, target: torch.Tensor,
                       config: GuidanceConfig) -> torch.Tensor:
    """The optimised loss of an image (``to_unit_image`` output), as the guided round computes it."""
    x = network_input(encoder, img01, config.quantize, whole=config.loss_resize == "whole")
    return squared_distance(concat_features(encoder, x), target)


@torch.no_grad()
def saved_image_distance(encoder: Encoder, img01: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distance of an (already 8-bit) image exactly as encoding its saved PNG would give it."""
    return squared_distance(concat_features(encoder, encoder.resize(img01)), target)


def normalize_per_sample(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """g·‖ref‖/‖g‖ with the norms taken over each sample's elements (method.md step 6, batched)."""
    dims = tuple(range(1, g.dim()))
    gn = g.flatten(1).norm(dim=1).view(-1, *([1] * len(dims)))
    rn = ref.flatten(1).norm(dim=1).view(-1, *([1] * len(dims)))
    return g * (rn / gn)


def threshold_per_sample(g: torch.Tensor, tau: float) -> torch.Tensor:
    """Clamp each sample's g element-wise to mean ± τ·std of that sample (τ = 0: unchanged).

    ``torch.std`` with its default (Bessel-corrected) estimator, as the paper's PyTorch code uses.
    """
    if tau <= 0:
        return g
    flat = g.flatten(1)
    shape = (-1, *([1] * (g.dim() - 1)))
    mean, std = flat.mean(dim=1).view(shape), flat.std(dim=1).view(shape)
    return torch.clamp(g, mean - tau * std, mean + tau * std)


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int],
               device: torch.device) -> torch.Tensor:
    """One N(0, I) tensor per sample, each from that sample's own CPU generator (batch-independent)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


def predict_x0(z: torch.Tensor, eps: torch.Tensor, a: float, official: bool = False) -> torch.Tensor:
    """x̂0 from z_t and ε. ``official``: the official code's float32 arithmetic (predict_start_from_noise,
    √(1/ᾱ)·z − √(1/ᾱ − 1)·ε): at t ≈ T with a cosine schedule 1/√ᾱ ≈ 2·10⁴ amplifies float32 round-off,
    so only the same arithmetic gives the same x̂0 there."""
    if official:
        return math.sqrt(1 / a) * z - math.sqrt(1 / a - 1) * eps
    return (z - math.sqrt(1 - a) * eps) / math.sqrt(a)


def predict_eps(z: torch.Tensor, x0: torch.Tensor, a: float) -> torch.Tensor:
    return (z - math.sqrt(a) * x0) / math.sqrt(1 - a)


def reverse_step(z: torch.Tensor, x0: torch.Tensor, a_t: float, a_prev: float, config: GuidanceConfig,
                 noise: torch.Tensor | None, beta: float | None = None) -> torch.Tensor:
    """z_{t_prev} from z_t and the (guided) x̂0, for consecutive or strided timesteps.

    'ddpm': the posterior mean of the strided chain (β' = 1 − ᾱ_t/ᾱ_prev) with σ² = β' — for
    consecutive steps exactly method.md's z_{t−1} = (z_t − β_t/√(1−ᾱ_t)·ε'')/√(1−β_t) + √β_t·n, which
    is what runs, with the scheduler's β_t, when ``beta`` is given (``GuidanceConfig.beta = "scheduler"``).
    'ddim': DDIM with η (η = 1 is the same mean with the posterior variance β̃).
    ``noise`` is None only at the chain's end (a_prev = 1), where the output is x̂0 itself.
    """
    if noise is None:
        return x0
    if beta is not None and config.update == "ddpm":  # the official code's arithmetic, term by term
        eps = (math.sqrt(1 / a_t) * z - x0) / math.sqrt(1 / a_t - 1)              # predict_noise_from_xstart
        return (1 / math.sqrt(1 - beta)) * (z - (1 / math.sqrt(1 - a_t)) * beta * eps) + math.sqrt(beta) * noise
    alpha = a_t / a_prev
    beta = 1 - alpha
    if config.update == "ddpm":
        mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * z
        return mean + math.sqrt(beta) * noise
    eps = predict_eps(z, x0, a_t)
    sigma = config.eta * math.sqrt((1 - a_prev) / (1 - a_t) * beta)
    return math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps + sigma * noise


def renoise(z_prev: torch.Tensor, a_t: float, a_prev: float, noise: torch.Tensor,
            beta: float | None = None) -> torch.Tensor:
    """Forward diffusion from t_prev back to t (self-recurrence): √(ᾱ_t/ᾱ_prev)·z + √(1 − ᾱ_t/ᾱ_prev)·n
    (with ``beta`` given: √(1 − β)·z + √β·n, the scheduler's β_t)."""
    alpha = a_t / a_prev if beta is None else 1 - beta
    return math.sqrt(alpha) * z_prev + math.sqrt(1 - alpha) * noise


# --------------------------------------------------------------------------------------------------------
# Typed outputs (as diffusers' ``step()`` returns a dataclass)
# --------------------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """What a guided decode of B samples returns (all tensors on the CPU, index = sample).

    ``best_images``/``final_images`` are [B, C, H, W] in [0, 1] on the 8-bit grid (value·255 is an
    integer), at the prior's resolution — exactly what gets saved. Distances are of those 8-bit images.
    ``best_step`` is the 0-based index of the timestep at which the best image was seen; ``best_loss``
    is, when the config picks the best image by the optimised loss (``best_by = "loss"``), that loss;
    ``evaluations`` counts guided UNet + decode + encoder passes (of all candidates; forward-only rounds,
    ``GuidanceConfig.grad_min_weight``, included and also counted in ``forward_only``);
    ``candidate`` is the candidate chain kept per target (``GuidanceConfig.candidates``) and ``noise_seed``
    the seed its noise was drawn from (a seed-pool seed with ``GuidanceConfig.pool``); ``stopped_step`` is
    the step after which a chain stopped (len(timesteps) − 1 when it ran to the end); ``skipped`` counts
    steps whose guidance was dropped because the gradient was not finite. ``seconds`` is the wall time of
    the call; ``sample_seconds`` each sample's share of it (network calls split by their chains).
    """

    best_images: torch.Tensor
    final_images: torch.Tensor
    best_distance: torch.Tensor
    final_distance: torch.Tensor
    best_step: torch.Tensor
    best_timestep: torch.Tensor
    evaluations: torch.Tensor
    stopped_step: torch.Tensor
    skipped: torch.Tensor
    seconds: float
    timesteps: list[int]
    seeds: list[int]
    config: GuidanceConfig
    trajectory: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    best_loss: torch.Tensor | None = None
    candidate: torch.Tensor | None = None
    forward_only: torch.Tensor | None = None
    sample_seconds: torch.Tensor | None = None
    noise_seed: torch.Tensor | None = None


@dataclass
class RoundOutput:
    """One guided round of a batch of chains (steps 1–8; diffusers' community guidance ``cond_fn``):
    ``eps`` the guided ε', ``eps_prior`` the prior's ε, ``image`` the pre-guidance 8-bit image in [0, 1],
    ``distance`` its distance (or the optimised loss with ``best_by = "loss"``), ``skipped`` chains whose
    gradient was not finite (guidance dropped), ``forward_only`` chains run without a backward pass."""

    eps: torch.Tensor
    eps_prior: torch.Tensor
    image: torch.Tensor
    distance: torch.Tensor
    skipped: torch.Tensor
    forward_only: torch.Tensor


@dataclass
class StepOutput:
    """One denoising step of a batch of chains (steps 9–11; as diffusers' ``SchedulerOutput``):
    ``prev_sample`` is z at the next round's input (re-noised back to t between self-recurrence rounds, z at
    t_prev after the last round, ẑ0' at the chain's end); ``pred_original_sample`` the guided ẑ0'."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def candidate_seeds(seeds: Sequence[int], n: int) -> list[int]:
    """The chains' seeds, target-major: target j's candidate k (0 … n−1) is seeds[j] + k·CANDIDATE_SEED_OFFSET."""
    return [int(s) + k * CANDIDATE_SEED_OFFSET for s in seeds for k in range(n)]


class _Best:
    """Smallest distance seen per chain, with its image (per chain, so a finished sample's can be freed) and step
    (best-image tracking)."""

    def __init__(self, b: int):
        self.distance = torch.full((b,), math.inf)
        self.images: dict[int, torch.Tensor] = {}
        self.step = torch.full((b,), -1, dtype=torch.long)
        self.timestep = torch.full((b,), -1, dtype=torch.long)
        self.improved_at = torch.zeros(b, dtype=torch.long)

    def update(self, idx: torch.Tensor, d: torch.Tensor, img: torch.Tensor, step, t) -> None:
        """Chains ``idx`` saw image ``img`` at distance ``d`` at step ``step`` / timestep ``t`` (ints or
        per-chain tensors)."""
        d = d.detach().float().cpu()
        better = d < self.distance[idx]
        if better.any():
            sel = idx[better]
            step, t = torch.as_tensor(step).expand(len(idx)), torch.as_tensor(t).expand(len(idx))
            self.distance[sel] = d[better]
            for c, im in zip(sel.tolist(), img.detach().float().cpu()[better]):
                self.images[c] = im
            self.step[sel] = step[better]
            self.timestep[sel] = t[better]
            self.improved_at[sel] = step[better]


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------
def _check_inputs(prior: Prior, encoder: Encoder, target: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    if len(seeds) == 0:
        raise UsageError("nothing to decode: no seeds given")
    if target.dim() == 1:
        target = target.unsqueeze(0).expand(len(seeds), -1)
    if target.dim() != 2 or target.shape[0] != len(seeds):
        raise UsageError(f"targets must be [B, D] with B = number of seeds ({len(seeds)}), "
                         f"got {list(target.shape)}")
    if not torch.isfinite(target).all():
        raise InputError("a target feature vector contains NaN or infinite values")
    with torch.no_grad():
        probe_img = torch.zeros(1, prior.channels, prior.image_size, prior.image_size, device=encoder.device)
        dim = concat_features(encoder, encoder.resize(probe_img)).shape[1]
    if dim != target.shape[1]:
        raise UsageError(f"target has {target.shape[1]} dimensions but {encoder.spec} "
                         f"({'+'.join(encoder.layers)}) gives {dim}")
    return target


def shift_flip(img: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image moved by its integer (dy, dx) with edge pixels replicated, then mirrored left-right where
    ``flips`` is set; differentiable (a crop of a padded copy)."""
    m = int(shifts.abs().max()) if shifts.numel() else 0
    if m == 0 and not bool(flips.any()):
        return img
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (m, m, m, m), mode="replicate") if m else img
    out = torch.stack([padded[j, :, m - int(dy):m - int(dy) + h, m - int(dx):m - int(dx) + w]
                       for j, (dy, dx) in enumerate(shifts.tolist())])
    return torch.where(flips.view(-1, 1, 1, 1).to(out.device), out.flip(-1), out)


def draw_transforms(generators: Sequence[torch.Generator], config: GuidanceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.eot_samples`` random (shift, flip) per chain, from each chain's own EOT generator:
    shifts [B·E, 2] and flips [B·E], ordered chain-major (chain j owns rows j·E … j·E+E−1)."""
    e, m = config.eot_samples, config.eot_shift
    shifts, flips = [], []
    for g in generators:
        shifts.append(torch.randint(-m, m + 1, (e, 2), generator=g) if m else torch.zeros(e, 2, dtype=torch.long))
        flips.append(torch.rand(e, generator=g) < 0.5 if config.eot_flip else torch.zeros(e, dtype=torch.bool))
    return torch.cat(shifts), torch.cat(flips)


def gaussian_blur(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur over the last two dims (σ in pixels; reflect padding; σ = 0: unchanged)."""
    if sigma <= 0:
        return g
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=g.dtype, device=g.device)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = g.shape[1]
    r_eff = min(r, g.shape[-1] - 1, g.shape[-2] - 1)
    if r_eff < r:  # reflect padding needs the pad to be smaller than the image
        k, r = k[r - r_eff:r + r_eff + 1] / k[r - r_eff:r + r_eff + 1].sum(), r_eff
    out = torch.nn.functional.pad(g, (r, r, r, r), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

# --------------------------------------------------------------------------------------------------------
# The guided round (steps 1–8) and the denoising step (9–11), for chains at any mix of timesteps
# --------------------------------------------------------------------------------------------------------
def _per_chain(value, n: int) -> list:
    """A scalar or a sequence/tensor of n values -> a list of n Python values."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.dim() else [value.item()] * n
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def _by_value(values: Sequence) -> list[tuple[object, torch.Tensor | None]]:
    """Rows grouped by equal value, [(value, rows)]; rows is None when every row shares the value."""
    uniq = list(dict.fromkeys(values))
    if len(uniq) == 1:
        return [(uniq[0], None)]
    return [(u, torch.tensor([j for j, v in enumerate(values) if v == u])) for u in uniq]


def _rowwise(groups: list[tuple[object, torch.Tensor | None]], fn: Callable, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(value, *rows)`` on each group's rows (one timestep's scalar arithmetic), put back together. A chain's
    numbers do not depend on which other chains share the call: every row sees the same scalar operations."""
    if groups[0][1] is None:
        return fn(groups[0][0], *tensors)
    parts = []
    for value, rows in groups:
        rows = rows.to(tensors[0].device)
        parts.append((rows, fn(value, *[x[rows] for x in tensors])))
    out = parts[0][1].new_empty((tensors[0].shape[0], *parts[0][1].shape[1:]))
    for rows, r in parts:
        out = out.index_copy(0, rows, r)
    return out


def guided_round(prior: Prior, encoder: Encoder, z: torch.Tensor, t: int | Sequence[int] | torch.Tensor,
                 target: torch.Tensor, config: GuidanceConfig, *, abar: float | Sequence[float],
                 weight: float | Sequence[float] | None = None,
                 eot_generators: Sequence[torch.Generator] | None = None,
                 loss_is_saved_distance: bool = False) -> RoundOutput:
    """Steps 1–8 for a batch of chains, each at its own timestep ``t`` with its ᾱ ``abar`` and weight (scalars:
    the same for all). Chains whose weight is below ``config.grad_min_weight`` run forward-only: ε' = ε, the
    distance from an encoder forward on x̂0, no backward pass.

    With expectation over transformations (``config.eot_*``) the loss is the mean over random shifted /
    mirrored copies of the image, and the reported distance is still that of the untransformed image."""
    n = z.shape[0]
    ts, abars = [int(v) for v in _per_chain(t, n)], [float(v) for v in _per_chain(abar, n)]
    weights = [float(v) for v in _per_chain(config.weight if weight is None else weight, n)]
    fwd = [0 < w < config.grad_min_weight for w in weights]  # w = 0 exactly: guidance is off anyway (as before)
    if any(fwd) and not all(fwd):                              # two calls: with and without a backward pass
        parts = [[j for j in range(n) if fwd[j] == f] for f in (False, True)]
        outs = [guided_round(prior, encoder, z[rows], [ts[j] for j in rows], target[rows], config,
                             abar=[abars[j] for j in rows], weight=[weights[j] for j in rows],
                             eot_generators=None if eot_generators is None else [eot_generators[j] for j in rows],
                             loss_is_saved_distance=loss_is_saved_distance) for rows in parts]
        order = torch.tensor(parts[0] + parts[1])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(n)

        def cat(name: str) -> torch.Tensor:
            x = torch.cat([getattr(o, name) for o in outs])
            return x[inv.to(x.device)]
        return RoundOutput(**{name: cat(name) for name in ("eps", "eps_prior", "image", "distance", "skipped",
                                                           "forward_only")})
    backward = not fwd[0]
    eot = config.eot_shift > 0 or config.eot_flip
    official = config.beta == "scheduler"
    tt = ts[0] if len(set(ts)) == 1 else torch.tensor(ts)
    shifts = flips = None
    if eot:  # drawn in forward-only rounds too, so a chain's later draws do not depend on the option
        shifts, flips = draw_transforms(eot_generators, config)
    with torch.set_grad_enabled(backward):
        z = z.detach().requires_grad_(backward)
        eps = prior.eps(z, tt)                                                                     # 1
        x0 = _rowwise(_by_value(abars), lambda a, z_, e_: predict_x0(z_, e_, a, official), z, eps)  # 2
        img = to_unit_image(prior.decode(x0), config.quantize, config.clamp)   # 3 (+ [0,1], 8-bit STE)
        if eot and backward:
            e = config.eot_samples
            seen = shift_flip(img.repeat_interleave(e, dim=0), shifts, flips)
            feats = concat_features(encoder, network_input(encoder, seen, config.quantize,
                                                           whole=config.loss_resize == "whole"))
            loss = squared_distance(feats, target.repeat_interleave(e, dim=0)).view(-1, e).mean(dim=1)
        else:
            loss = loss_path_distance(encoder, img, target, config)             # 4
        if backward:
            (grad_loss,) = torch.autograd.grad(loss.sum(), z)                   # chains are independent
    img = img.detach().clamp(0, 1)                                               # the saved image
    if config.best_by == "loss" or (loss_is_saved_distance and not eot):
        distance = loss.detach()
    else:
        distance = saved_image_distance(encoder, torch.round(img * 255) / 255, target)
    eps = eps.detach()
    if not backward:
        no = torch.zeros(n, dtype=torch.bool, device=eps.device)
        return RoundOutput(eps, eps, img, distance, no, ~no)
    g = gaussian_blur(-grad_loss, config.grad_blur)                              # 5: ∂(−L)/∂z_t
    g = normalize_per_sample(g, eps)                                             # 6
    bad = ~torch.isfinite(g.flatten(1)).all(dim=1)                               # NaN guard (and ‖g‖ = 0)
    g = torch.where(bad.view(-1, *([1] * (g.dim() - 1))), torch.zeros_like(g), g)
    g = threshold_per_sample(g, config.tau)                                      # 7
    eps_guided = _rowwise(_by_value(weights), lambda w, e_, g_: e_ - w * g_, eps, g)  # 8
    if config.rescale > 0:                                                       # pull ‖ε'‖ back to ‖ε‖
        eps_guided = torch.lerp(eps_guided, normalize_per_sample(eps_guided, eps), config.rescale)
    return RoundOutput(eps_guided, eps, img, distance, bad, torch.zeros_like(bad))


@torch.no_grad()
def _x0_image(prior: Prior, x0: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    return to_unit_image(prior.decode(x0), quantize)


def _scheduler_beta(prior: Prior, config: GuidanceConfig, t: int, t_prev: int) -> float | None:
    """The scheduler's β_t where ``config.beta`` asks for it and the step is a consecutive DDPM step."""
    if config.beta == "scheduler" and config.update == "ddpm" and t_prev in (t - 1, -1):
        return float(prior.betas[t])
    return None


class _Chain:
    """Where one timestep of the chain stands: its t, the neighbours' ᾱ and what the config asks there."""

    def __init__(self, prior: Prior, config: GuidanceConfig, timesteps: list[int], acp: torch.Tensor, i: int):
        n = len(timesteps)
        self.i, self.t = i, timesteps[i]
        self.last = i == n - 1
        self.t_prev = -1 if self.last else timesteps[i + 1]
        self.a_t = float(acp[self.t])
        self.a_prev = 1.0 if self.last else float(acp[self.t_prev])
        self.beta = _scheduler_beta(prior, config, self.t, self.t_prev)
        self.rounds = config.rounds_at(i, n)
        self.guided = config.guided_at(i, n)
        self.weight = config.weight_at(i, n, self.a_t)


@torch.no_grad()
def denoise_step(prior: Prior, z: torch.Tensor, eps_guided: torch.Tensor, at: _Chain, config: GuidanceConfig,
                 generators: Sequence[torch.Generator], final_round: bool,
                 recurrence_generators: Sequence[torch.Generator] | None = None) -> StepOutput:
    """Steps 9–11 for chains at one timestep: ẑ0' from ε', z_{t_prev} (noise from each chain's generator),
    and, between self-recurrence rounds, re-noised back to t.

    With ``recurrence_generators`` the rounds that are not the step's last draw all their noise from those:
    the chain's own generator then gives one draw per timestep, the one its kept z_{t_prev} uses, exactly as
    an unguided chain of the same seed (the seed pool's samples) draws it. Every draw is still a fresh
    N(0, I), so the sampled distribution is the same."""
    x0 = predict_x0(z, eps_guided, at.a_t, official=config.beta == "scheduler")     # 9: ẑ0'
    if prior.clip_sample and config.clip_x0:
        x0 = x0.clamp(-prior.clip_sample_range, prior.clip_sample_range)
    draws = generators if final_round or recurrence_generators is None else recurrence_generators
    noise = None if at.last else draw_noise(draws, prior.latent_shape, z.device)
    z_prev = reverse_step(z, x0, at.a_t, at.a_prev, config, noise, at.beta)          # 10
    if not final_round:                                                              # 11: self-recurrence
        z_prev = renoise(z_prev, at.a_t, at.a_prev, draw_noise(draws, prior.latent_shape, z.device), at.beta)
    return StepOutput(z_prev, x0)


# --------------------------------------------------------------------------------------------------------
# The loop: a queue of chains, kept full
# --------------------------------------------------------------------------------------------------------
class _Queue:
    """Chains of many samples, each at its own step and round; samples enter in order while there is room.

    A sample enters with its ``candidates`` chains (layout stage); when all of them have passed the
    selection step, the closest goes on and the others leave (:meth:`select`); a chain leaves early on
    patience or a distance bound (:meth:`stop_early`). A sample is finished when its kept chain has left.
    Each chain draws its noise from its own generators, so which chains share a network call changes
    nothing in the arithmetic but float rounding of the batched networks.
    """

    def __init__(self, seeds: Sequence[int], n_cand: int, max_chains: int | None,
                 chain_seeds: Sequence[Sequence[int]] | None = None):
        self.n_cand = n_cand
        self.n_samples = len(seeds)
        if chain_seeds is None:
            self.chain_seeds = candidate_seeds(seeds, n_cand)
        else:
            if len(chain_seeds) != len(seeds) or any(len(cs) != n_cand for cs in chain_seeds):
                raise UsageError(f"chain_seeds must give {n_cand} seed(s) for each of the {len(seeds)} samples")
            self.chain_seeds = [int(c) for cs in chain_seeds for c in cs]
        self.max_chains = max_chains or len(self.chain_seeds)
        self.next_sample = 0
        self.running: list[int] = []            # chains in admission order (state 'run' or 'wait')
        self.state = ["new"] * len(self.chain_seeds)
        self.chosen: list[int | None] = [None if n_cand > 1 else s for s in range(self.n_samples)]
        self.finished: set[int] = set()

    def chains_of(self, s: int) -> range:
        return range(s * self.n_cand, (s + 1) * self.n_cand)

    def admit(self) -> list[int]:
        """Samples that enter now: while fewer than ``max_chains`` chains are in flight (at least one sample)."""
        new = []
        while self.next_sample < self.n_samples and (not self.running or len(self.running) < self.max_chains):
            s = self.next_sample
            self.next_sample += 1
            for c in self.chains_of(s):
                self.state[c] = "run"
                self.running.append(c)
            new.append(s)
        return new

    def ready(self) -> list[int]:
        """The chains of the next network call: the earliest samples' first (they finish, and are written, first)."""
        return [c for c in self.running if self.state[c] == "run"][:self.max_chains]

    def leave(self, c: int) -> None:
        self.state[c] = "off"
        self.running.remove(c)

    def sample_of(self, c: int) -> int:
        return c // self.n_cand


def sample_stream(prior: Prior, encoder: Encoder | None, target: torch.Tensor | None, seeds: Sequence[int],
                  config: GuidanceConfig, *, trajectory_every: int = 0, callback: StepCallback | None = None,
                  max_chains: int | None = None, chain_seeds: Sequence[Sequence[int]] | None = None,
                  start_images: torch.Tensor | None = None):
    """:func:`sample`, yielding ``(index, result)`` for each sample (``result`` holds that one sample) as soon as
    it is finished, while the chains of the next samples keep the network calls full.

    ``max_chains`` bounds the chains per network call (None: all chains at once, as one batch); samples enter
    the queue while fewer than ``max_chains`` chains are in flight. A sample's images are the ones a run of
    that sample alone gives, up to the float rounding of batched network kernels.

    ``chain_seeds`` (one list of ``chains_at(0)`` seeds per sample) replaces the candidates' seeds
    seed + k·offset, e.g. by the seed pool's picks (``probe.seed_pool``).

    ``start_images`` ([chains, *latent shape], the prior's latents of real images; with ``config.data_start``
    only) are where the chains start: noised to the timestep of ``config.start_index`` with the chain's own
    first draw, the steps before it skipped (``probe.data_pool`` picks them).
    """
    n_cand = config.chains_at(0)
    guided = not config.unguided
    has_target = encoder is not None and target is not None
    if guided and not has_target:
        raise UsageError("guided sampling needs an encoder and a target")
    device = prior.device
    if torch.device(device).type == "cpu":  # page faults were a third of a CPU decode's time (probe.heap)
        keep_freed_memory()
    if has_target:
        target = _check_inputs(prior, encoder, torch.as_tensor(target), seeds).to(encoder.device).float()
    if config.data_start and start_images is None:
        raise UsageError("a data-start config (data_start > 0) needs start_images: probe.data_pool picks them")
    if config.pool and not config.data_start and chain_seeds is None:
        raise UsageError("a seed-pool config (pool > 0) needs chain_seeds: probe.seed_pool.pool_chain_seeds picks them")
    q = _Queue(seeds, n_cand, max_chains, chain_seeds)
    b = len(q.chain_seeds)
    timesteps = config.timesteps(prior.num_train_timesteps)
    n_steps = len(timesteps)
    first = config.start_index(prior.num_train_timesteps)
    if config.data_start and len(start_images) != b:
        raise UsageError(f"--data-start needs one start image per chain ({b}), not {len(start_images)}")
    # beta = "scheduler": ᾱ = Π(1 − β_s) in float64 from the scheduler's β, as the official code computes it
    # (diffusers accumulates ᾱ in float32)
    acp = prior.alphas_cumprod if config.beta == "chain" else torch.cumprod(1 - prior.betas.double(), 0)
    at = [_Chain(prior, config, timesteps, acp, i) for i in range(n_steps)]
    img_shape = (prior.channels, prior.image_size, prior.image_size)
    # the loss of an 8-bit, clamped image through the eval transform is the saved PNG's distance (no second
    # forward); the official whole-image path rounds again after its resize, which only a no-op resize undoes
    loss_is_saved = config.quantize and config.clamp != "none" and encoder is not None and \
        (config.loss_resize == "eval" or (encoder.in_chans, encoder.input_size, encoder.input_size) == img_shape)
    by_loss = guided and config.track_best and config.best_by == "loss"

    def distance_of(img: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not has_target:
            return torch.full((len(rows),), math.nan)
        return saved_image_distance(encoder, img, target[rows])

    generators: dict[int, torch.Generator] = {}
    eot_generators: dict[int, torch.Generator] = {}
    recurrence_generators: dict[int, torch.Generator] = {}
    z: dict[int, torch.Tensor] = {}              # each chain's z at its next round's input
    step = [0] * b
    rnd = [0] * b
    best = _Best(b)
    final_images: dict[int, torch.Tensor] = {}
    final_distance = torch.full((b,), math.nan)
    evaluations = torch.zeros(b, dtype=torch.long)
    forward_only = torch.zeros(b, dtype=torch.long)
    skipped = torch.zeros(b, dtype=torch.long)
    stopped_step = torch.full((b,), n_steps - 1, dtype=torch.long)
    frames: dict[int, list[tuple[int, torch.Tensor]]] = {}
    seconds = torch.zeros(len(seeds), dtype=torch.float64)
    progress = [0] * len(seeds)
    reported = -1

    def admit() -> None:
        for s in q.admit():
            chains = list(q.chains_of(s))
            for c in chains:
                generators[c] = torch.Generator("cpu").manual_seed(q.chain_seeds[c])
                eot_generators[c] = torch.Generator("cpu").manual_seed(q.chain_seeds[c] + EOT_SEED_OFFSET)
                if config.pool:  # the kept steps draw the pool sample's noise (denoise_step)
                    recurrence_generators[c] = torch.Generator("cpu").manual_seed(
                        q.chain_seeds[c] + RECURRENCE_SEED_OFFSET)
                frames[c] = []
            zs = draw_noise([generators[c] for c in chains], prior.latent_shape, device)   # z_T ~ N(0, I)
            if config.data_start:  # z_t = √ᾱ·x + √(1−ᾱ)·ε at the start step: the real image, noised
                a = at[first].a_t
                x = start_images[chains[0]:chains[-1] + 1].to(device=device, dtype=zs.dtype)
                zs = math.sqrt(a) * x + math.sqrt(1.0 - a) * zs
            for j, c in enumerate(chains):
                z[c] = zs[j]
                step[c] = progress[s] = first

    narrowing = n_cand > 1 and config.narrow_keep > 0  # GuidanceConfig checked narrow_at and narrow_keep
    narrowed: set[int] = set()   # samples past the narrowing stage
    dropped: set[int] = set()    # candidates it stopped

    def narrow(s: int) -> None:
        """Successive halving: at step ``narrow_at`` the ``narrow_keep`` candidates whose x̂0 is closest go on
        to the selection at ``early_steps``; the others stop there."""
        waiting = [c for c in q.chains_of(s) if q.state[c] == "wait"]
        order = sorted(waiting, key=lambda c: (float(final_distance[c].nan_to_num(math.inf)), c))
        for c in order[config.narrow_keep:]:
            stopped_step[c] = step[c] - 1
            dropped.add(c)
            q.leave(c)
        for c in order[:config.narrow_keep]:
            q.state[c] = "run"
        narrowed.add(s)

    def select(s: int) -> None:
        """Best of N at the layout stage: the candidate whose x̂0 is closest goes on, the others leave."""
        chains = [c for c in q.chains_of(s) if c not in dropped]
        k = int(final_distance[chains].nan_to_num(math.inf).argmin())
        q.chosen[s] = chains[k]
        for c in chains:
            if q.state[c] == "wait":
                if c == chains[k]:
                    q.state[c] = "run"
                else:
                    stopped_step[c] = step[c] - 1
                    q.leave(c)

    def stop_early(c: int, i: int) -> bool:
        """Patience or distance bound reached after step i."""
        done = (config.max_distance > 0 and bool(best.distance[c] < config.max_distance)) or \
            (config.stop_patience > 0 and i - int(best.improved_at[c]) >= config.stop_patience)
        if done:
            stopped_step[c] = i
        return done

    def finish(s: int) -> SampleResult:
        chains = list(q.chains_of(s))
        c = q.chosen[s]
        best_loss = None
        best_distance = best.distance[c:c + 1].clone()
        img = best.images[c].unsqueeze(0)
        if by_loss:  # the loss picked the best image; report the distance its saved PNG gives
            best_loss = best_distance
            best_distance = distance_of(img.to(encoder.device), torch.tensor([s])).cpu().float()
        res = SampleResult(best_images=img, final_images=final_images[c].unsqueeze(0),
                           best_distance=best_distance, final_distance=final_distance[c:c + 1].clone(),
                           best_step=best.step[c:c + 1].clone(), best_timestep=best.timestep[c:c + 1].clone(),
                           evaluations=evaluations[chains].sum().view(1), stopped_step=stopped_step[c:c + 1].clone(),
                           skipped=skipped[chains].sum().view(1), seconds=float(seconds[s]), timesteps=timesteps,
                           seeds=[int(seeds[s])], config=config,
                           trajectory=[(i, f.unsqueeze(0)) for i, f in frames[c]], best_loss=best_loss,
                           candidate=torch.tensor([c - chains[0]]), forward_only=forward_only[chains].sum().view(1),
                           sample_seconds=seconds[s:s + 1].float(),
                           noise_seed=torch.tensor([q.chain_seeds[c]], dtype=torch.long))
        for c2 in chains:  # free the sample's chains
            for store in (best.images, final_images, frames, z, generators, eot_generators, recurrence_generators):
                store.pop(c2, None)
        q.finished.add(s)
        return res

    admit()
    while len(q.finished) < len(seeds):
        rows_l = q.ready()
        tick = time.perf_counter()
        if rows_l:
            rows = torch.tensor(rows_l)
            srows = rows // n_cand                                                  # each chain's sample
            steps_l = [step[c] for c in rows_l]
            z_t = torch.stack([z[c] for c in rows_l])
            eps_g = torch.empty_like(z_t)
            guided_rows = [j for j, i in enumerate(steps_l) if guided and at[i].guided]
            if guided_rows:                                                         # 1–8
                gi = torch.tensor(guided_rows)
                gc = [rows_l[j] for j in guided_rows]
                out = guided_round(prior, encoder, z_t[gi.to(device)], [at[steps_l[j]].t for j in guided_rows],
                                   target[srows[gi].to(target.device)], config,
                                   abar=[at[steps_l[j]].a_t for j in guided_rows],
                                   weight=[at[steps_l[j]].weight for j in guided_rows],
                                   eot_generators=[eot_generators[c] for c in gc], loss_is_saved_distance=loss_is_saved)
                eps_g[gi.to(device)] = out.eps
                gidx = rows[gi]
                evaluations[gidx] += 1
                forward_only[gidx] += out.forward_only.cpu().long()
                skipped[gidx] += out.skipped.cpu().long()
                if config.track_best:
                    best.update(gidx, out.distance, out.image, torch.tensor([steps_l[j] for j in guided_rows]),
                                torch.tensor([at[steps_l[j]].t for j in guided_rows]))
            plain = [j for j in range(len(rows_l)) if j not in set(guided_rows)]
            if plain:                                                               # unguided steps
                pi = torch.tensor(plain).to(device)
                with torch.no_grad():
                    eps_g[pi] = prior.eps(z_t[pi], _tensor_or_int([at[steps_l[j]].t for j in plain]))
            # 9–11, per timestep (the same scalar arithmetic whatever shares the call)
            final_round = [rnd[c] == at[i].rounds - 1 for c, i in zip(rows_l, steps_l)]
            x0 = torch.empty_like(z_t)
            z_next = torch.empty_like(z_t)
            for (i, fin), grp in _by_value(list(zip(steps_l, final_round))):
                sel = torch.arange(len(rows_l)) if grp is None else grp
                d = sel.to(device)
                st = denoise_step(prior, z_t[d], eps_g[d], at[i], config,
                                  [generators[rows_l[j]] for j in sel.tolist()], fin,
                                  [recurrence_generators[rows_l[j]] for j in sel.tolist()] if config.pool else None)
                x0[d], z_next[d] = st.pred_original_sample, st.prev_sample
            keep_frame = [bool(trajectory_every) and (i % trajectory_every == 0 or at[i].last) for i in steps_l]
            need = [config.track_best or (fin and (guided or at[i].last or kf))
                    for i, fin, kf in zip(steps_l, final_round, keep_frame)]
            d_post = torch.full((len(rows_l),), math.nan)
            img_post = None
            if any(need):
                ni = torch.tensor([j for j in range(len(rows_l)) if need[j]])
                with torch.no_grad():
                    decoded = prior.decode(x0[ni.to(device)])
                    img_post = torch.zeros((len(rows_l), *img_shape))
                    img_n = to_unit_image(decoded, True)
                    img_post[ni] = img_n.float().cpu()
                    saved = [j for j in ni.tolist() if (config.track_best and not by_loss) or
                             (final_round[j] and (config.track_best or guided or at[steps_l[j]].last))]
                    if saved and has_target:
                        si = torch.tensor(saved)
                        pos = torch.tensor([ni.tolist().index(j) for j in saved])
                        d_post[si] = distance_of(img_n[pos.to(img_n.device)], srows[si].to(target.device)).float().cpu()
                    if config.track_best:
                        if by_loss:
                            d_sel = loss_path_distance(encoder, to_unit_image(decoded, config.quantize, config.clamp),
                                                       target[srows[ni].to(target.device)], config)
                        else:
                            d_sel = d_post[ni]
                        best.update(rows[ni], d_sel, img_n, torch.tensor([steps_l[j] for j in ni.tolist()]),
                                    torch.tensor([at[steps_l[j]].t for j in ni.tolist()]))
            # each chain's bookkeeping: next round, or the step done (output, trajectory, early stop, selection)
            for j, c in enumerate(rows_l):
                i = steps_l[j]
                z[c] = z_next[j]
                if not final_round[j]:
                    rnd[c] += 1
                    continue
                rnd[c], step[c] = 0, i + 1
                s = q.sample_of(c)
                if config.track_best or guided or at[i].last or keep_frame[j]:      # the chain's current output
                    final_images[c], final_distance[c] = img_post[j].clone(), d_post[j]
                    if not config.track_best:
                        best.distance[c], best.images[c] = d_post[j], img_post[j].clone()
                        best.step[c], best.timestep[c] = i, at[i].t
                if keep_frame[j]:
                    frames[c].append((i, final_images[c]))
                if at[i].last or (guided and stop_early(c, i)):
                    q.leave(c)
                elif q.chosen[s] is None and (i == config.early_steps - 1 or
                                              (narrowing and s not in narrowed and i == config.narrow_at - 1)):
                    q.state[c] = "wait"
                progress[s] = max(progress[s], i + 1)
            dt = time.perf_counter() - tick
            seconds.index_add_(0, srows, torch.full((len(rows_l),), dt / len(rows_l), dtype=torch.float64))
        for s in range(q.next_sample):                                             # selections, finished samples
            if s in q.finished:
                continue
            if q.chosen[s] is None and all(q.state[c] != "run" for c in q.chains_of(s)):
                if narrowing and s not in narrowed and any(q.state[c] == "wait" for c in q.chains_of(s)):
                    narrow(s)
                else:
                    select(s)
            if q.chosen[s] is not None and q.state[q.chosen[s]] == "off":
                progress[s] = n_steps
                yield s, finish(s)
        admit()
        if callback is not None:
            done = sum(progress) // len(seeds)
            if done != reported:
                reported = done
                callback(done, n_steps, torch.tensor([_sample_best(best, q, s) for s in range(len(seeds))]))


def _tensor_or_int(ts: list[int]) -> int | torch.Tensor:
    return ts[0] if len(set(ts)) == 1 else torch.tensor(ts)


def _sample_best(best: _Best, q: _Queue, s: int) -> float:
    """A sample's best distance so far: its kept chain's, or the closest of its candidates before the selection."""
    if q.chosen[s] is not None:
        return float(best.distance[q.chosen[s]])
    return float(best.distance[list(q.chains_of(s))].min())


def sample(prior: Prior, encoder: Encoder | None, target: torch.Tensor | None, seeds: Sequence[int],
           config: GuidanceConfig, *, trajectory_every: int = 0,
           callback: StepCallback | None = None, max_chains: int | None = None,
           chain_seeds: Sequence[Sequence[int]] | None = None,
           start_images: torch.Tensor | None = None) -> SampleResult:
    """Run B = len(seeds) guided samples towards ``target`` ([B, D] or [D]; the encoder's layers
    concatenated) and return the best and final images with their distances.

    With ``config.unguided`` (the ``none`` preset and the baselines) no gradient is taken; ``encoder``
    and ``target`` may then be None (distances are reported as NaN). ``callback(step, total, best)`` is
    called as the samples advance (step: timesteps done, averaged over the samples) with each sample's
    best distance so far. With ``config.candidates`` = N the first ``early_steps`` run N chains per sample.
    ``max_chains`` bounds the chains per network call (:func:`sample_stream`, the queue behind this).
    """
    t0 = time.perf_counter()
    done = dict(sample_stream(prior, encoder, target, seeds, config, trajectory_every=trajectory_every,
                              callback=callback, max_chains=max_chains, chain_seeds=chain_seeds,
                              start_images=start_images))
    return combine([done[s] for s in range(len(seeds))], seconds=time.perf_counter() - t0)


def combine(results: Sequence[SampleResult], seconds: float | None = None) -> SampleResult:
    """Per-sample results (``sample_stream``'s) as one, in the given order. A trajectory frame missing for a
    sample that stopped early repeats its last frame."""
    first = results[0]
    tensors = {}
    for f in dataclasses.fields(SampleResult):
        vals = [getattr(r, f.name) for r in results]
        if all(isinstance(v, torch.Tensor) for v in vals):
            tensors[f.name] = torch.cat(vals)
    steps = sorted({i for r in results for i, _ in r.trajectory})
    trajectory = []
    for i in steps:
        frame = []
        for r in results:
            before = [f for k, f in r.trajectory if k <= i]
            frame.append(before[-1] if before else r.trajectory[0][1])
        trajectory.append((i, torch.cat(frame)))
    return dataclasses.replace(first, **tensors, seeds=[s for r in results for s in r.seeds], trajectory=trajectory,
                               seconds=sum(r.seconds for r in results) if seconds is None else seconds)
