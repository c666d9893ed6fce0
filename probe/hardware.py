"""What the machine computes fast: used to pick or question a precision before a slow run starts."""

from __future__ import annotations

import torch


def native_bf16(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast runs at least as fast as fp32 on ``device``.

    Why it matters: a CPU without bf16 instructions (e.g. AVX2-only AMD EPYC) emulates them, and measured on
    the 2.7M-parameter bundled UNet (forward + backward, batch 8) bf16 took 3.8 s against fp32's 0.35 s: 11x
    slower. CUDA devices of compute capability 8.0 (Ampere) and later have bf16 tensor cores.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:  # oneDNN's own test: AVX-512 with bf16 support, or AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
