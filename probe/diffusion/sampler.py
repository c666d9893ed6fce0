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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from probe.diffusion.priors import Prior
from probe.diffusion.schedules import GuidanceConfig
from probe.errors import InputError, UsageError
from probe.models.encoder import Encoder

StepCallback = Callable[[int, int, torch.Tensor], None]
EOT_SEED_OFFSET = 1_000_003  # a chain's transformation draws: its own generator, apart from its noise
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
    """Resize to the network's input and round to 8 bits again (straight-through), as docs/method.md says.

    ``whole``: the whole image resized bicubic without crop, antialias or clamp (the official loss path,
    ``GuidanceConfig.loss_resize = "whole"``); otherwise the encoder's eval transform.
    """
    x = encoder.preprocess.resize_whole(img01) if whole else encoder.resize(img01)
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
# Result and bookkeeping
# --------------------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """What a guided decode of B chains returns (all tensors on the CPU, index = chain).

    ``best_images``/``final_images`` are [B, C, H, W] in [0, 1] on the 8-bit grid (value·255 is an
    integer), at the prior's resolution — exactly what gets saved. Distances are of those 8-bit images.
    ``best_step`` is the 0-based index of the timestep at which the best image was seen; ``best_loss``
    is, when the config picks the best image by the optimised loss (``best_by = "loss"``), that loss;
    ``evaluations`` counts guided UNet + decode + encoder forward/backward passes (of all candidates);
    ``candidate`` is the candidate chain kept per target (``GuidanceConfig.candidates``); ``stopped_step`` is
    the step after which a chain stopped (len(timesteps) − 1 when it ran to the end); ``skipped`` counts
    steps whose guidance was dropped because the gradient was not finite.
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


def candidate_seeds(seeds: Sequence[int], n: int) -> list[int]:
    """The chains' seeds, target-major: target j's candidate k (0 … n−1) is seeds[j] + k·CANDIDATE_SEED_OFFSET."""
    return [int(s) + k * CANDIDATE_SEED_OFFSET for s in seeds for k in range(n)]


class _Best:
    """Smallest distance seen per chain, with its image and step."""

    def __init__(self, b: int, shape: Sequence[int]):
        self.distance = torch.full((b,), math.inf)
        self.images = torch.zeros((b, *shape))
        self.step = torch.full((b,), -1, dtype=torch.long)
        self.timestep = torch.full((b,), -1, dtype=torch.long)
        self.improved_at = torch.zeros(b, dtype=torch.long)

    def update(self, idx: torch.Tensor, d: torch.Tensor, img: torch.Tensor, step: int, t: int) -> None:
        d = d.detach().float().cpu()
        better = d < self.distance[idx]
        if better.any():
            sel = idx[better]
            self.distance[sel] = d[better]
            self.images[sel] = img.detach().float().cpu()[better]
            self.step[sel] = step
            self.timestep[sel] = t
            self.improved_at[sel] = step


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


def _guided_round(prior: Prior, encoder: Encoder, z: torch.Tensor, t: int, a_t: float, target: torch.Tensor,
                  config: GuidanceConfig, loss_is_saved_distance: bool, weight: float | None = None,
                  eot_generators: Sequence[torch.Generator] | None = None):
    """Steps 1–8 for a batch of chains: returns ε', the pre-guidance 8-bit image and its distance,
    and a mask of chains whose gradient was not finite (their guidance is skipped).

    With expectation over transformations (``config.eot_*``) the loss is the mean over random shifted /
    mirrored copies of the image, and the reported distance is still that of the untransformed image."""
    weight = config.weight if weight is None else weight
    eot = config.eot_shift > 0 or config.eot_flip
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        eps = prior.eps(z, t)                                                    # 1
        x0 = predict_x0(z, eps, a_t, official=config.beta == "scheduler")       # 2
        img = to_unit_image(prior.decode(x0), config.quantize, config.clamp)    # 3 (+ [0,1], 8-bit STE)
        if eot:
            e = config.eot_samples
            shifts, flips = draw_transforms(eot_generators, config)
            seen = shift_flip(img.repeat_interleave(e, dim=0), shifts, flips)
            feats = concat_features(encoder, network_input(encoder, seen, config.quantize,
                                                           whole=config.loss_resize == "whole"))
            loss = squared_distance(feats, target.repeat_interleave(e, dim=0)).view(-1, e).mean(dim=1)
        else:
            loss = loss_path_distance(encoder, img, target, config)             # 4
        (grad_loss,) = torch.autograd.grad(loss.sum(), z)                       # chains are independent
    img = img.detach().clamp(0, 1)                                               # the saved image
    if config.best_by == "loss" or (loss_is_saved_distance and not eot):
        distance = loss.detach()
    else:
        distance = saved_image_distance(encoder, torch.round(img * 255) / 255, target)
    eps = eps.detach()
    g = gaussian_blur(-grad_loss, config.grad_blur)                              # 5: ∂(−L)/∂z_t
    g = normalize_per_sample(g, eps)                                             # 6
    bad = ~torch.isfinite(g.flatten(1)).all(dim=1)                               # NaN guard (and ‖g‖ = 0)
    g = torch.where(bad.view(-1, *([1] * (g.dim() - 1))), torch.zeros_like(g), g)
    g = threshold_per_sample(g, config.tau)                                      # 7
    eps_guided = eps - weight * g                                                # 8
    if config.rescale > 0:                                                       # pull ‖ε'‖ back to ‖ε‖
        eps_guided = torch.lerp(eps_guided, normalize_per_sample(eps_guided, eps), config.rescale)
    return eps_guided, img, distance, bad


@torch.no_grad()
def _x0_image(prior: Prior, x0: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    return to_unit_image(prior.decode(x0), quantize)


def _scheduler_beta(prior: Prior, config: GuidanceConfig, t: int, t_prev: int) -> float | None:
    """The scheduler's β_t where ``config.beta`` asks for it and the step is a consecutive DDPM step."""
    if config.beta == "scheduler" and config.update == "ddpm" and t_prev in (t - 1, -1):
        return float(prior.betas[t])
    return None


def sample(prior: Prior, encoder: Encoder | None, target: torch.Tensor | None, seeds: Sequence[int],
           config: GuidanceConfig, *, trajectory_every: int = 0,
           callback: StepCallback | None = None) -> SampleResult:
    """Run B = len(seeds) guided chains towards ``target`` ([B, D] or [D]; the encoder's layers
    concatenated) and return the best and final images with their distances.

    With ``config.unguided`` (the ``none`` preset and the baselines) no gradient is taken; ``encoder``
    and ``target`` may then be None (distances are reported as NaN). ``callback(step, total, best)`` is
    called after every timestep with the 1-based step count and the current best distances.
    With ``config.candidates`` = N the first ``early_steps`` run N chains per target (memory: B·N chains;
    ``DecodeSettings.samples_per_batch`` sizes B for that).
    """
    n_cand = config.chains_at(0)                                                 # chains per target at first
    t_start = time.perf_counter()
    guided = not config.unguided
    has_target = encoder is not None and target is not None
    if guided and not has_target:
        raise UsageError("guided sampling needs an encoder and a target")
    device = prior.device
    if has_target:
        target = _check_inputs(prior, encoder, torch.as_tensor(target), seeds).to(encoder.device).float()
    chain_seeds = candidate_seeds(seeds, n_cand)
    if has_target and n_cand > 1:
        target = target.repeat_interleave(n_cand, dim=0)
    chosen = torch.arange(len(seeds)) * n_cand                                   # the chain kept per target
    selected = n_cand == 1
    b = len(chain_seeds)
    generators = [torch.Generator("cpu").manual_seed(s) for s in chain_seeds]
    eot_generators = [torch.Generator("cpu").manual_seed(s + EOT_SEED_OFFSET) for s in chain_seeds]
    timesteps = config.timesteps(prior.num_train_timesteps)
    n_steps = len(timesteps)
    # beta = "scheduler": ᾱ = Π(1 − β_s) in float64 from the scheduler's β, as the official code computes it
    # (diffusers accumulates ᾱ in float32)
    acp = prior.alphas_cumprod if config.beta == "chain" else torch.cumprod(1 - prior.betas.double(), 0)
    img_shape = (prior.channels, prior.image_size, prior.image_size)
    loss_is_saved = config.quantize and config.clamp != "none" and encoder is not None and \
        (encoder.in_chans, encoder.input_size, encoder.input_size) == img_shape
    by_loss = guided and config.track_best and config.best_by == "loss"

    def distance_of(img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not has_target:
            return torch.full((len(idx),), math.nan)
        return saved_image_distance(encoder, img, target[idx])

    z = draw_noise(generators, prior.latent_shape, device)                     # z_T ~ N(0, I)
    best = _Best(b, img_shape)
    final_images = torch.zeros((b, *img_shape))
    final_distance = torch.full((b,), math.nan)
    evaluations = torch.zeros(b, dtype=torch.long)
    skipped = torch.zeros(b, dtype=torch.long)
    stopped_step = torch.full((b,), n_steps - 1, dtype=torch.long)
    active = torch.ones(b, dtype=torch.bool)
    trajectory: list[tuple[int, torch.Tensor]] = []

    for i, t in enumerate(timesteps):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        last = i == n_steps - 1
        t_prev = -1 if last else timesteps[i + 1]
        a_t = float(acp[t])
        a_prev = 1.0 if last else float(acp[t_prev])
        gens = [generators[j] for j in idx.tolist()]
        z_t = z[idx]
        beta_t = _scheduler_beta(prior, config, t, t_prev)
        rounds = config.rounds_at(i, n_steps)
        guided_now = guided and config.guided_at(i, n_steps)
        weight = config.weight_at(i, n_steps, a_t)
        eot_gens = [eot_generators[j] for j in idx.tolist()]
        keep_frame = bool(trajectory_every) and (i % trajectory_every == 0 or last)
        for k in range(rounds):
            if guided_now:
                eps_g, img_pre, d_pre, bad = _guided_round(prior, encoder, z_t, t, a_t, target[idx], config,
                                                           loss_is_saved, weight, eot_gens)
                evaluations[idx] += 1
                skipped[idx] += bad.cpu().long()
                if config.track_best:
                    best.update(idx, d_pre, img_pre, i, t)
            else:
                with torch.no_grad():
                    eps_g = prior.eps(z_t, t)
            with torch.no_grad():
                x0 = predict_x0(z_t, eps_g, a_t, official=config.beta == "scheduler")  # 9: ẑ0'
                if prior.clip_sample and config.clip_x0:
                    x0 = x0.clamp(-prior.clip_sample_range, prior.clip_sample_range)
                final_round = k == rounds - 1
                if config.track_best or (final_round and (guided or last or keep_frame)):
                    decoded = prior.decode(x0)
                    img_post = to_unit_image(decoded, True)
                    saved_needed = (config.track_best and not by_loss) or \
                        (final_round and (config.track_best or guided or last))
                    d_post = distance_of(img_post, idx) if saved_needed else torch.full((len(idx),), math.nan)
                    if config.track_best:
                        d_sel = loss_path_distance(encoder, to_unit_image(decoded, config.quantize, config.clamp),
                                                   target[idx], config) if by_loss else d_post
                        best.update(idx, d_sel, img_post, i, t)
                noise = None if last else draw_noise(gens, prior.latent_shape, device)
                z_prev = reverse_step(z_t, x0, a_t, a_prev, config, noise, beta_t)  # 10
                if not final_round:                                                 # 11: self-recurrence
                    z_t = renoise(z_prev, a_t, a_prev, draw_noise(gens, prior.latent_shape, device), beta_t)
        z[idx] = z_prev
        if config.track_best or guided or last or keep_frame:                       # chain's current output
            final_images[idx] = img_post.cpu()
            final_distance[idx] = d_post.float().cpu()
            if not config.track_best:
                best.distance[idx], best.images[idx] = final_distance[idx], final_images[idx]
                best.step[idx], best.timestep[idx] = i, t
        if keep_frame:
            trajectory.append((i, final_images.clone()))
        if guided and not last:                                                     # early stopping
            done = torch.zeros(b, dtype=torch.bool)
            if config.max_distance > 0:
                done |= best.distance < config.max_distance
            if config.stop_patience > 0:
                done |= (i - best.improved_at) >= config.stop_patience
            newly = done & active
            stopped_step[newly] = i
            active &= ~done
        if not selected and i == config.early_steps - 1:                             # keep one candidate
            chosen = chosen + final_distance.view(-1, n_cand).nan_to_num(math.inf).argmin(dim=1)
            dropped = torch.ones(b, dtype=torch.bool)
            dropped[chosen] = False
            stopped_step[dropped & active] = i
            active &= ~dropped
            selected = True
        if callback is not None:
            callback(i + 1, n_steps, best.distance[chosen] if selected else
                     best.distance.view(-1, n_cand).min(dim=1).values)

    best_loss = None
    best_distance = best.distance[chosen]
    if by_loss:  # the loss picked the best images; report the distance their saved PNGs give
        best_loss = best_distance.clone()
        best_distance = torch.cat([distance_of(best.images[j:j + 1].to(encoder.device), torch.tensor([j])).cpu()
                                   for j in chosen.tolist()])
    return SampleResult(best_images=best.images[chosen], final_images=final_images[chosen],
                        best_distance=best_distance, final_distance=final_distance[chosen],
                        best_step=best.step[chosen], best_timestep=best.timestep[chosen],
                        evaluations=evaluations.view(-1, n_cand).sum(dim=1), stopped_step=stopped_step[chosen],
                        skipped=skipped.view(-1, n_cand).sum(dim=1), seconds=time.perf_counter() - t_start,
                        timesteps=timesteps, seeds=[int(s) for s in seeds], config=config,
                        trajectory=[(i, frame[chosen]) for i, frame in trajectory], best_loss=best_loss,
                        candidate=chosen - torch.arange(len(seeds)) * n_cand)
