"""glibc heap settings for training: large tensors reused from the heap instead of mapped afresh every step.

glibc serves every block above its mmap threshold (at most 32 MiB) by a fresh ``mmap`` and unmaps it on free, so
each large activation of a training step is page-faulted in (and zeroed by the kernel) on every step. With
:func:`retained_heap`, the paper's autoencoder step (64 trials, 2 CPU cores) took 11.4 s instead of 17.8 s at
2,048 bins and 0.74 s instead of 0.93 s at 256 (``benchmarks/test_training_bench.py::test_retained_heap``, which
alternates the two settings; held from the first step, as in training, 8.8-10.3 s). The price: the resident set
stays at the step's peak between steps. :class:`~ldns_fast.training.StageTrainer` trains inside it; other C
libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
GLIBC_MMAP_MAX = 65536  # glibc's default number of mmapped blocks
GLIBC_MAX_TRIM_THRESHOLD = 64 * 2**20  # twice glibc's largest dynamic mmap threshold


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    glibc = all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if glibc else None


libc = _glibc()


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Within the block, glibc serves large blocks from the heap and keeps freed memory for reuse.

    ``M_MMAP_MAX = 0`` (no mmapped blocks) and a trim threshold above any heap, so the second and later steps of
    a loop find their activations' pages already mapped. The resident set stays at the loop's peak instead of
    returning to the baseline between steps. On exit glibc's default block count and its largest dynamic trim
    threshold return and the heap is trimmed. Yields whether the settings took effect (False off glibc).
    """
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_MAX_TRIM_THRESHOLD)
        libc.malloc_trim(0)
