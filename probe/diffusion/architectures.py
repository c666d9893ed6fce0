"""Stable Diffusion v1.4 built from its published configs, at random init, without downloading anything.

The paper's prior is SD v1.4 at 512², but its weights live on the Hugging Face hub. Its *cost* (time
per guided evaluation, peak memory) and the plumbing of probe's latent path do not depend on the
weights, so ``benchmarks/sd_cost.py`` and the tests build the very same architecture from the configs
below (copied from ``CompVis/stable-diffusion-v1-4``: ``unet/config.json``, ``vae/config.json``,
``scheduler/scheduler_config.json``) and fill it with cheap random values.

Building on the ``meta`` device and filling afterwards (:func:`fill_random`) avoids PyTorch's default
per-layer initialisation, which takes ~8 s for the 860 M UNet parameters on a small CPU; the fill
copies one random pool cyclically, scaled by 1/√fan_in, so activations keep a sane scale. The values
are *not* the default init's: they are meant for cost and plumbing, never for images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from probe.diffusion.priors import Prior, _scheduler_state

# CompVis/stable-diffusion-v1-4, unet/config.json (diffusers keys; defaults omitted)
SD_V1_4_UNET: dict = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
}
# vae/config.json: 8× down-sampling, 4 latent channels, scaling 0.18215
SD_V1_4_VAE: dict = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "act_fn": "silu", "norm_num_groups": 32,
    "sample_size": 512, "scaling_factor": 0.18215,
}
# scheduler/scheduler_config.json (a PNDM config; probe reads its β schedule into a DDPMScheduler)
SD_V1_4_SCHEDULER: dict = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}
TEXT_CONTEXT = (77, 768)  # CLIP ViT-L/14 text encoder: 77 tokens × 768 (the UNet's cross-attention input)
POOL = (1 << 20) + 7  # random values copied cyclically into every parameter (a prime-ish length)


@torch.no_grad()
def fill_random(module: nn.Module, seed: int = 0, shared: bool = False) -> nn.Module:
    """Give every parameter cheap random values: weights ~ N(0, 1)/√fan_in, norm weights 1, biases 0.

    Works on modules materialised with ``to_empty`` (uninitialised memory); buffers are zeroed. The
    weights copy one random pool cyclically (a memory copy, not a random draw per element). With
    ``shared=True`` no copy is made at all: every weight becomes a view into one pool per fan-in, so the
    860 M-parameter UNet occupies a few hundred MB and builds in about a second — the computation is the
    same (the weights never require grad), only the memory and cache footprint are not the real ones,
    so benchmarks use ``shared=False``.
    """
    params = list(module.named_parameters())
    if not params:
        return module
    device = params[0][1].device
    gen = torch.Generator("cpu").manual_seed(seed)
    norms = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
    norm_weights = {id(m.weight) for m in module.modules() if isinstance(m, norms) and m.weight is not None}
    weights = [(i, p) for i, (_n, p) in enumerate(params) if p.dim() > 1]
    for _i, p in params:
        if p.dim() <= 1:
            p.fill_(1.0 if id(p) in norm_weights else 0.0)
    if shared:
        need: dict[int, int] = {}
        for _i, p in weights:
            fan_in = p[0].numel()
            need[fan_in] = max(need.get(fan_in, 0), p.numel())
        pools = {f: (torch.randn(n, generator=gen) / math.sqrt(f)).to(device) for f, n in need.items()}
        for _i, p in weights:
            p.data = pools[p[0].numel()][:p.numel()].view(p.shape).to(p.dtype)
    else:
        pool = torch.randn(2 * POOL, generator=gen).to(device)
        for i, p in weights:
            flat = p.view(-1)
            n, off = flat.numel(), (i * 7919) % POOL
            src = pool[off:off + POOL].to(p.dtype)
            whole = n // POOL
            if whole:
                flat[:whole * POOL].view(whole, POOL).copy_(src.expand(whole, POOL))
            rest = n - whole * POOL
            if rest:
                flat[whole * POOL:].copy_(src[:rest])
            flat.mul_(1.0 / math.sqrt(p[0].numel()))
    for b in module.buffers():
        b.zero_()
    return module


def _build(cls: type, config: dict, device: torch.device, seed: int, shared: bool) -> nn.Module:
    with torch.device("meta"):
        model = cls(**config)
    # to_empty only reserves memory; with shared=True the weights are replaced by views before use
    return fill_random(model.to_empty(device=device), seed, shared=shared)


def sd_v1_4_random(image_size: int = 512, device: str | torch.device = "cpu", seed: int = 0,
                   spec: str = "random:sd-v1-4", shared_weights: bool = False) -> Prior:
    """A latent Prior with SD v1.4's UNet, VAE and noise schedule at random values.

    ``image_size`` (a multiple of 64) sets the decoded resolution (512 = the paper's; smaller for
    CPU tests). The empty-prompt condition is a fixed random [1, 77, 768] tensor: the text encoder runs
    once per prior, so it adds nothing to the cost of a guided evaluation. ``shared_weights`` (tests)
    makes the weights views of shared pools (:func:`fill_random`): same computation, little memory.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if image_size % 64:
        raise ValueError(f"image_size must be a multiple of 64 (the UNet halves 8× latents 3 times), not {image_size}")
    device = torch.device(device)
    latent = image_size // 8
    unet = _build(UNet2DConditionModel, {**SD_V1_4_UNET, "sample_size": latent}, device, seed, shared_weights)
    vae = _build(AutoencoderKL, {**SD_V1_4_VAE, "sample_size": image_size}, device, seed + 1, shared_weights)
    gen = torch.Generator("cpu").manual_seed(seed + 2)
    context = torch.randn(1, *TEXT_CONTEXT, generator=gen).to(device)
    scheduler = DDPMScheduler.from_config(SD_V1_4_SCHEDULER)
    return Prior(spec=spec, unet=unet, vae=vae, text_embedding=context, latent_shape=(4, latent, latent),
                 channels=3, image_size=image_size, scaling_factor=SD_V1_4_VAE["scaling_factor"],
                 info={"kind": "latent", "architecture": "stable-diffusion-v1-4", "weights": "random"},
                 **_scheduler_state(scheduler, latent=True))
