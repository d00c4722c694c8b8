"""Naive materialising formulas: the float64 oracle for tests, the ``"naive"`` backend and the benchmarks'
baseline (the research code's way: every term held at once).

They build the full ``[H, Np, L]`` (Vandermonde) or ``[..., Np, M]`` (Cauchy) complex tensor, so memory
is O(H * Np * L); the backward passes materialise the same tensors. ``backend="auto"`` picks them only
for small problems (:func:`.api.resolve_backend`).
"""
from __future__ import annotations

import torch


def _powers(x: torch.Tensor, L: int) -> torch.Tensor:
    """``exp(x l)`` for ``l = 0 .. L-1``: ``[H, Np, L]``."""
    return torch.exp(x.unsqueeze(-1) * torch.arange(L, device=x.device, dtype=x.real.dtype))


def vandermonde_naive(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    return 2 * (v.unsqueeze(-1) * _powers(x, L)).sum(-2).real


def vandermonde_naive_backward(grad: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                               L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv, dx)`` of :func:`vandermonde_naive` for ``grad [H, L]``: ``dv = 2 sum_l g conj(z^l)``,
    ``dx = 2 conj(v) sum_l l g conj(z^l)``."""
    g = grad.to(x.real.dtype).unsqueeze(-2)  # [H, 1, L]
    terms = g * _powers(x, L).conj_physical()  # [H, Np, L]
    l = torch.arange(L, device=x.device, dtype=x.real.dtype)
    return 2 * terms.sum(-1), 2 * v.conj_physical() * (terms * l).sum(-1)


def cauchy_naive(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``r[..., m] = sum_n v/(z_m - w_n) + conj(v)/(z_m - conj(w_n))``; v, w ``[..., Np]`` (broadcast),
    z ``[M]``."""
    v, w = v.unsqueeze(-1), w.unsqueeze(-1)  # [..., Np, 1]
    return (v / (z - w) + v.conj_physical() / (z - w.conj_physical())).sum(-2)


def cauchy_naive_backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                          w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv [R, P, Np], dw [P, Np])`` of :func:`cauchy_naive` for v ``[R, P, Np]``, w ``[P, Np]`` and
    ``grad [R, P, M]`` (z is constant)."""
    g = grad.to(v.dtype).unsqueeze(-2)  # [R, P, 1, M]
    c = (1 / (z - w.unsqueeze(-1))).conj_physical()  # conj 1/(z - w): [P, Np, M]
    d = 1 / (z - w.conj_physical().unsqueeze(-1))  # 1/(z - conj w)
    dv = (g * c + g.conj_physical() * d).sum(-1)
    dw = (v.conj_physical() * (g * c * c + g.conj_physical() * d * d).sum(-1)).sum(0)
    return dv, dw
