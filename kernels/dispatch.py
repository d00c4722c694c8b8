"""Cost-based choice of the SSM kernel backend for ``backend="auto"``, per device and problem size.

A static cost model (deterministic, so a seeded run makes the same choice on every host), calibrated on
2 CPU cores with ``benchmarks/test_dispatch_bench.py`` (``benchmarks/results/dispatch_cpu.md``):

- CPU: the naive materialising formula while it holds at most :data:`NAIVE_MAX_ELEMENTS` complex terms
  (below that its single fused pass beats the tiled path's extra ops: up to 1.5x at 1-4 channels), else
  the torch path, which measured fastest at every larger shape forward and backward (L = 140 .. 65,536,
  H = 64 .. 512: 1.1-60x the naive formula, 1.3-50x keops, whose per-call overhead and OpenMP pool
  beside torch's cost more than its lazy reductions save here).
- CUDA: Triton when it is available (compiled kernels, no materialised terms), else the torch path.
  These have not been timed on a GPU yet.
"""
from __future__ import annotations

import torch

# Materialised complex terms (rows x Np x L for Vandermonde, R x P x Np x M for Cauchy) up to which the
# naive formula is the faster one on CPU (measured crossover: 4,096-12,000 terms).
NAIVE_MAX_ELEMENTS = 8192


def _choose(device: torch.device, terms: int) -> str:
    if device.type == "cuda":
        from .api import backend_status

        return "triton" if backend_status("triton", device)[0] else "torch"
    return "naive" if terms <= NAIVE_MAX_ELEMENTS else "torch"


def auto_vandermonde_backend(device: torch.device, H: int, Np: int, L: int) -> str:
    """Backend for a Vandermonde kernel of ``H`` rows, ``Np`` states and length ``L`` on ``device``."""
    return _choose(device, H * Np * L)


def auto_cauchy_backend(device: torch.device, R: int, P: int, Np: int, M: int) -> str:
    """Backend for a Cauchy sum of ``R x P`` rows sharing ``P`` pole sets of ``Np`` states, ``M`` nodes."""
    return _choose(device, R * P * Np * M)
