"""How many chains one network call of the guided sampler should hold (``--batch-size auto``).

On CUDA: the free memory (``torch.cuda.mem_get_info``) over a measured per-chain cost (one guided round at
batch 1 and 2, peak allocated memory), with a margin. On the CPU: large batches pay for themselves (the
bundled fashion models on 2 cores: 4.9 s per guided evaluation at batch 1, 0.23 s at 8, 0.11 s at 48, 0.07 s
at 128), so ``CPU_CHAINS`` bounded by the available RAM over an estimate of a chain's activations.
"""

from __future__ import annotations

import torch

from probe.diffusion.priors import Prior
from probe.models.encoder import Encoder

CPU_CHAINS = 128
MAX_CHAINS = 1024
FALLBACK_CHAIN_BYTES = 256 << 20  # when the activations cannot be counted
MEMORY_SHARE = 0.6  # of the free memory, the rest for the allocator's slack, the images and other jobs


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _round_bytes(prior: Prior, encoder: Encoder, b: int) -> None:
    from probe.diffusion.sampler import guided_round
    from probe.diffusion.schedules import GuidanceConfig

    z = torch.zeros(b, *prior.latent_shape, device=prior.device)
    with torch.no_grad():
        img = torch.zeros(1, prior.channels, prior.image_size, prior.image_size, device=encoder.device)
        from probe.diffusion.sampler import concat_features
        dim = concat_features(encoder, encoder.resize(img)).shape[1]
    guided_round(prior, encoder, z, prior.num_train_timesteps // 2, torch.zeros(b, dim, device=encoder.device),
                 GuidanceConfig(), abar=0.5, weight=0.5)


def activation_bytes(prior: Prior, encoder: Encoder) -> int:
    """A chain's memory in one guided round, estimated from the sizes of every module's output (forward,
    batch 1) times 3 (kept for the backward pass, gradients, temporaries)."""
    total = [0]

    def hook(_m, _i, out):
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                total[0] += o.numel() * o.element_size()
            elif hasattr(o, "sample") and isinstance(o.sample, torch.Tensor):
                total[0] += o.sample.numel() * o.sample.element_size()
    nets = [prior.unet, encoder.model] + ([prior.vae] if prior.vae is not None else [])
    handles = []
    try:
        for net in nets:  # TorchScript modules take no hooks: their activations go uncounted
            if isinstance(net, torch.nn.Module):
                handles += [m.register_forward_hook(hook) for m in net.modules()
                            if not isinstance(m, torch.jit.ScriptModule)]
        with torch.no_grad():
            _round_bytes_forward(prior, encoder)
    except RuntimeError:
        return FALLBACK_CHAIN_BYTES
    finally:
        for h in handles:
            h.remove()
    return max(3 * total[0], 1 << 20)


def _round_bytes_forward(prior: Prior, encoder: Encoder) -> None:
    from probe.diffusion.sampler import concat_features

    z = torch.zeros(1, *prior.latent_shape, device=prior.device)
    x = prior.decode(prior.eps(z, prior.num_train_timesteps // 2))
    concat_features(encoder, encoder.resize(((x + 1) / 2).clamp(0, 1).to(encoder.device)))


def auto_chains(prior: Prior, encoder: Encoder) -> int:
    """Chains per network call for ``--batch-size auto`` (see the module docstring); at least 1."""
    device = prior.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, _total = torch.cuda.mem_get_info(device)
        peaks = []
        for b in (1, 2):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            _round_bytes(prior, encoder, b)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        per_chain = max(peaks[1] - peaks[0], 1)
        return int(max(1, min(MAX_CHAINS, (MEMORY_SHARE * free - peaks[0]) // per_chain)))
    per_chain = max(activation_bytes(prior, encoder), 1)
    return int(max(1, min(CPU_CHAINS, MEMORY_SHARE * _available_ram() // per_chain)))
