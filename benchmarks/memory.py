"""Peak memory of one call: CUDA allocator statistics on GPUs, the process high-water mark on CPU."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from ldns_fast.training.heap import GLIBC_MAX_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
from ldns_fast.training.heap import libc as _libc

MEASURE_MMAP_THRESHOLD = 64 * 1024
GLIBC_TRIM_THRESHOLD = 128 * 1024  # glibc's default, fixed once M_MMAP_THRESHOLD is set

# glibc serves blocks of 64 KiB and more by mmap and unmaps them on free, so the resident set tracks the
# tensors alive at any moment (M_MMAP_THRESHOLD = -3 in mallopt). Smaller blocks are noise here.
if _libc is not None:  # not glibc: the CPU figures then include allocator reuse
    _libc.mallopt(M_MMAP_THRESHOLD, MEASURE_MMAP_THRESHOLD)


@contextlib.contextmanager
def timing_allocator() -> Iterator[None]:
    """glibc settings for timing only (no CPU peak figures inside): big blocks from the heap, kept.

    With the 64 KiB mmap threshold above, every large tensor costs an mmap, page faults on first touch and
    a munmap: a denoiser step with many intermediate tensors runs several times slower than in a normal
    process. Inside this block blocks up to 32 MiB come from the heap and the heap is not trimmed below
    64 MiB; on exit the measuring settings return and the heap is trimmed, so later peak figures hold.
    """
    if _libc is None:
        yield
        return
    _libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    _libc.mallopt(M_TRIM_THRESHOLD, GLIBC_MAX_TRIM_THRESHOLD)
    try:
        yield
    finally:
        _libc.mallopt(M_MMAP_THRESHOLD, MEASURE_MMAP_THRESHOLD)
        _libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        _libc.malloc_trim(0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated above the pre-call level at the peak of ``fn()``.

    CPU: resets the kernel's resident-set high-water mark (Linux ``/proc/self/clear_refs``) and reads
    ``VmHWM - VmRSS(before)``; large torch buffers are mmapped and returned on free, so this tracks them.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024
