"""Naive materialising formulas: the float64 oracle for tests and the baseline for benchmarks.

They build the full ``[H, Np, L]`` (Vandermonde) or ``[..., Np, M]`` (Cauchy) complex tensor, so memory
is O(H * Np * L); no library path calls them.
"""
from __future__ import annotations

import torch


def vandermonde_naive(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    l = torch.arange(L, device=x.device, dtype=x.real.dtype)
    powers = torch.exp(x.unsqueeze(-1) * l)  # [H, Np, L]
    return 2 * (v.unsqueeze(-1) * powers).sum(-2).real


def cauchy_naive(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``r[..., m] = sum_n v/(z_m - w_n) + conj(v)/(z_m - conj(w_n))``; v, w ``[..., Np]``, z ``[M]``."""
    v, w = v.unsqueeze(-1), w.unsqueeze(-1)  # [..., Np, 1]
    return (v / (z - w) + v.conj_physical() / (z - w.conj_physical())).sum(-2)
