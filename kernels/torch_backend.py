"""Plain-torch backend: exact formulas with bounded memory, float64-capable, differentiable.

Vandermonde: powers are split as ``z^(bT + j) = z^(bT) z^j`` so the sum over the state becomes one real
batched matmul ``[H, L/T, 2Np] @ [H, 2Np, T]`` (memory O(H Np (T + L/T)) instead of O(H Np L)).
Cauchy: the frequency axis is processed in chunks, forward and backward (analytic gradients), so no
``[..., Np, M]`` tensor is ever held.
"""
from __future__ import annotations

import math

import torch

# Elements of a [rows, Np, chunk] complex temporary in the chunked Cauchy loops.
CAUCHY_CHUNK_ELEMENTS = 1 << 21


def vandermonde_torch(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``.

    The powers are evaluated in complex128 (they are small: ``[H, Np, T + L/T]``) so the phase
    ``Im(x) l`` carries no float32 rounding; only the matmul runs in the input precision.
    """
    H, Np = v.shape
    tile = min(L, 1 << max(4, math.ceil(math.log2(math.sqrt(L)))))
    n_tiles = math.ceil(L / tile)
    x64 = x.to(torch.complex128)
    j = torch.arange(tile, device=x.device, dtype=torch.float64)
    anchors = torch.arange(n_tiles, device=x.device, dtype=torch.float64) * tile
    inner = torch.exp(x64.unsqueeze(-1) * j).to(x.dtype)  # [H, Np, T]: z^j
    outer = v.unsqueeze(1) * torch.exp(x64.unsqueeze(1) * anchors[:, None]).to(x.dtype)  # [H, nT, Np]
    # Re(a b) = Re(a) Re(b) - Im(a) Im(b): one real matmul over the stacked state axis.
    lhs = torch.cat([outer.real, -outer.imag], dim=-1)  # [H, nT, 2Np]
    rhs = torch.cat([inner.real, inner.imag], dim=-2)  # [H, 2Np, T]
    return 2 * torch.bmm(lhs, rhs).reshape(H, n_tiles * tile)[:, :L]


def _chunks(rows: int, Np: int, M: int) -> tuple[range, int]:
    """Chunk starts along the frequency axis and the chunk size bounding the temporaries."""
    step = max(1, CAUCHY_CHUNK_ELEMENTS // max(1, rows * Np))
    return range(0, M, step), step


class _CauchyTorch(torch.autograd.Function):
    """Chunked Cauchy sum with analytic backward (gradients for v and w; z is constant)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, z, w)
        rows, Np = v.shape
        starts, step = _chunks(rows, Np, z.shape[0])
        out = torch.empty(rows, z.shape[0], dtype=v.dtype, device=v.device)
        vv, ww = v.unsqueeze(-1), w.unsqueeze(-1)
        for s in starts:
            zc = z[s : s + step]
            out[:, s : s + step] = (vv / (zc - ww) + vv.conj() / (zc - ww.conj())).sum(-2)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, z, w = ctx.saved_tensors
        rows, Np = v.shape
        starts, step = _chunks(rows, Np, z.shape[0])
        gv = torch.zeros_like(v)
        gw_sum = torch.zeros_like(w)
        ww = w.unsqueeze(-1)
        for s in starts:
            zc, g = z[s : s + step], grad[:, None, s : s + step]  # g: [rows, 1, m]
            c = 1 / (zc - ww)  # [rows, Np, m]
            d = 1 / (zc - ww.conj())
            gv += (g * c.conj() + g.conj() * d).sum(-1)
            gw_sum += (g * c.conj() ** 2 + g.conj() * d**2).sum(-1)
        return gv, None, v.conj() * gw_sum


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v, w complex ``[rows, Np]``, z ``[M]`` -> ``[rows, M]``."""
    return _CauchyTorch.apply(v, z, w)
