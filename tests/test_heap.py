"""probe.heap: glibc keeps freed memory, so a CPU decode does not fault its activations in at every step."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from probe.heap import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    assert keep_freed_memory() is True and keep_freed_memory() is True  # once per process, then a no-op

    def churn() -> None:
        for _ in range(20):  # 64 MiB tensors: above glibc's largest mmap threshold
            torch.ones(16 << 20).sum()

    churn()  # the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2_000  # without it: 20 x 16,384 pages faulted in again (about 330,000)


def test_probe_heap_system_keeps_glibc_defaults(monkeypatch):
    import probe.heap as heap

    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.setenv("PROBE_HEAP", "system")
    assert heap.keep_freed_memory() is False
