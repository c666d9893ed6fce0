"""An independent transcription of the official guided loop of arXiv 2509.07936, for tests only.

Transcribed from KimiakiShirahama/FeatureSpaceAnalysisByGuidedDiffusionModel:
``ldm/models/diffusion/ddpm.py`` — ``register_schedule`` (schedule buffers: float64 numpy cast to float32),
``predict_start_from_noise``, ``predict_noise_from_xstart``, ``check_image`` and ``operation_diffusion``
(forward guidance only, the published configuration: no backward guidance, no z_prev selection);
``scripts/resnet50_guided.py`` — ``Resnet50.forward`` (the loss; ``clip_guided.py`` and ``vith14_guided.py``
differ only in the network, the mean/std and the size).

It deliberately shares no code with probe's sampler: only the networks (the prior's ε-network, its
decoder D and the feature network f) are passed in as callables. Batch size 1, as the official code.
``TF.resize`` is called with ``antialias=False``: the official environment pins torchvision 0.12
(environment.yaml), whose tensor resize does not antialias. Noise comes from one CPU generator in the
official order (z_T, then per round: the step's noise if t > 0, then the re-noising noise if this is
not the last round), standing in for its unseeded ``torch.randn_like``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms


class OfficialSchedule:
    """The buffers of ``DDPM.register_schedule`` that the loop uses (float64 arithmetic, float32 storage)."""

    def __init__(self, betas: np.ndarray):
        betas = np.asarray(betas, dtype=np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731 - as the official partial(torch.tensor)
        self.betas = f32(betas)
        self.sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1.0 - alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod - 1))
        self.num_timesteps = len(betas)

    def predict_start_from_noise(self, x_t, t, noise):
        return self.sqrt_recip_alphas_cumprod[t] * x_t - self.sqrt_recipm1_alphas_cumprod[t] * noise

    def predict_noise_from_xstart(self, x_t, t, pred_xstart):
        return (self.sqrt_recip_alphas_cumprod[t] * x_t - pred_xstart) / self.sqrt_recipm1_alphas_cumprod[t]


def official_loss(net: Callable, size: int, mean, std) -> Callable:
    """``Resnet50.forward``: the squared distance of the decoded image's features to the goal, [1, 1]."""
    trans = transforms.Normalize(mean=list(mean), std=list(std))

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = (x + 1) * 0.5
        x = x.mul(255)
        x = x + x.round().detach() - x.detach()
        x = TF.resize(x, (size, size), interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
        x = x + x.round().detach() - x.detach()
        x = x.div(255)
        x = trans(x)
        xfeats = net(x).to(torch.float32)
        yfeats = y.to(torch.float32)
        x_sq = torch.sum(xfeats ** 2, dim=1, keepdim=True)
        y_sq = torch.sum(yfeats ** 2, dim=1, keepdim=True).T
        xy = torch.mm(xfeats, yfeats.T)
        return x_sq + y_sq - 2.0 * xy

    return forward


@dataclass
class OfficialRun:
    rounds: list[dict] = field(default_factory=list)  # per round: t, j, z_t, eps, eps_guided, sim
    best_val: float = -float("inf")
    best_image: torch.Tensor | None = None
    best_t: int = -1
    best_rec: float = -1
    z_prev: torch.Tensor | None = None


def guided_round(sched: OfficialSchedule, apply_model: Callable, decode: Callable, criterion: Callable,
                 goal: torch.Tensor, z: torch.Tensor, i: int, weight: float, tau: float):
    """Lines 754–787 of operation_diffusion for one round: returns (ε, ε', sim = −dist, decoded image)."""
    with torch.enable_grad():
        z_in = z.detach().requires_grad_(True)
        model_output = apply_model(z_in, i)
        z_recon = sched.predict_start_from_noise(z_in, i, model_output)
        recons_image = decode(z_recon)
        selected = -1 * criterion(recons_image, goal)
        grad = torch.autograd.grad(selected.sum(), z_in)[0]
    model_output = model_output.detach()
    grad_norm = (torch.linalg.norm(model_output) / torch.linalg.norm(grad)) * grad
    if tau > 0:
        lo = torch.mean(grad_norm) - tau * torch.std(grad_norm)
        hi = torch.mean(grad_norm) + tau * torch.std(grad_norm)
        grad_norm = torch.clamp(grad_norm, lo, hi)
    eps = model_output - weight * grad_norm
    return model_output, eps, selected.detach(), recons_image.detach()


def operation_diffusion(sched: OfficialSchedule, apply_model: Callable, decode: Callable, criterion: Callable,
                        goal: torch.Tensor, shape, generator: torch.Generator, weight: float, tau: float,
                        rounds_at: Callable[[int], int]) -> OfficialRun:
    """The whole loop over i = T−1 … 0 with ``rounds_at(i)`` self-recurrence rounds at timestep i."""
    run = OfficialRun()

    def check(image: torch.Tensor, val: torch.Tensor, i: int, rec: float) -> None:
        if val.item() > run.best_val:
            run.best_val, run.best_image, run.best_t, run.best_rec = val.item(), image.clone(), i, rec

    z = torch.randn(tuple(shape), generator=generator)
    for i in reversed(range(sched.num_timesteps)):
        num_steps = rounds_at(i)
        for j in range(num_steps):
            z_t = z.clone()
            eps0, eps, sel, img = guided_round(sched, apply_model, decode, criterion, goal, z, i, weight, tau)
            check(img, sel, i, j)
            with torch.no_grad():
                z_recon = sched.predict_start_from_noise(z, i, eps)
                recons_image = decode(z_recon)
                check(recons_image, -1 * criterion(recons_image, goal), i, j + 0.5)
                if i != 0:
                    z_epsilon = sched.predict_noise_from_xstart(z, i, z_recon)
                    coeff1 = 1 / torch.sqrt(1 - sched.betas[i])
                    coeff2 = 1 / sched.sqrt_one_minus_alphas_cumprod[i]
                    coeff3 = sched.betas[i]
                    std_noise = torch.sqrt(sched.betas[i])
                    noise = torch.randn(tuple(shape), generator=generator)
                    z_prev = coeff1 * (z - coeff2 * coeff3 * z_epsilon) + std_noise * noise
                else:
                    z_prev = z_recon
                if j != num_steps - 1:
                    c1 = torch.sqrt(1 - sched.betas[i])
                    c2 = torch.sqrt(sched.betas[i])
                    z = c1 * z_prev + c2 * torch.randn(tuple(shape), generator=generator)
                else:
                    z = z_prev
            run.rounds.append({"t": i, "j": j, "z_t": z_t, "eps": eps0, "eps_guided": eps, "sim": sel.item()})
    run.z_prev = z_prev
    return run
