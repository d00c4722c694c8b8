"""Peak memory of one call: CUDA allocator statistics on GPUs, the process high-water mark on CPU."""
from __future__ import annotations

import ctypes
from typing import Callable

import torch

# glibc serves blocks of 64 KiB and more by mmap and unmaps them on free, so the resident set tracks the
# tensors alive at any moment (M_MMAP_THRESHOLD = -3 in mallopt). Smaller blocks are noise here.
try:
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
except OSError:  # not glibc: the CPU figures then include allocator reuse
    pass


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
