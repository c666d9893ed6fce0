"""Keep freed host memory for reuse: the CPU decode's page faults were a third of its time.

Every guided evaluation allocates and frees the networks' activations and gradients, tens of MB each.
glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and
gives a freed heap top back to the kernel above 128 KiB, so the next evaluation's tensors land on new
pages that the kernel must fault in and zero. Measured on the 2-core CPU, emoji prior + EfficientNet-Lite0
(forward + backward at batch 16): 215,000 page faults and 0.63 s of kernel time per 1.18 s step; with
mmap off and trimming only above 2 GiB, 3,000 page faults and 0.81 s a step at about the same peak
memory (2.6 GB against 2.5). ``benchmarks/heap_cost.py``: a guided evaluation 1.25x faster on the fashion
models, 1.96x on emoji + Lite0. The decode's memory is bounded by its batch (``--batch-size auto``
counts it), so keeping the peak allocated costs nothing that the run did not already need.

A no-op off glibc (macOS, Windows, musl), after the first call, and with ``PROBE_HEAP=system`` in the
environment (glibc's defaults kept: the "before" of ``benchmarks/heap_cost.py``, or a machine where many
small processes must hand memory back between steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
TRIM_ABOVE = 2**31 - 1  # bytes of free heap top kept before trimming (mallopt takes a C int)

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap and keep freed memory (once per process).

    Returns whether the setting took effect (False off glibc or with ``PROBE_HEAP=system``)."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("PROBE_HEAP", "").strip().lower() == "system":
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
    return _done
