"""Plain-torch backend: exact formulas with bounded memory, float64-capable, forward and backward.

Vandermonde: powers are split as ``z^(bT + j) = z^(bT) z^j`` so the sum over the state becomes one real
batched matmul ``[H, L/T, 2Np] @ [H, 2Np, T]`` (memory O(H Np (T + L/T)) instead of O(H Np L)); the
backward is the same split with the roles of state and position swapped.
Cauchy: the frequency axis is processed in chunks, forward and backward, so no ``[..., Np, M]`` tensor
is ever held.
Fused denoiser-block ops: ``torch.native_layer_norm`` plus elementwise ops, analytic gradients.

Each ``<op>_torch`` has an ``<op>_torch_backward``; :mod:`.ops` wires them into autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of a [rows, Np, chunk] complex temporary in the chunked Cauchy loops.
CAUCHY_CHUNK_ELEMENTS = 1 << 21


def _tiled_powers(x: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z^j [H, Np, T], z^(bT) [H, nT, Np], anchors bT [nT])`` for ``z = exp(x)``, ``nT T >= L``.

    The powers are evaluated in complex128 (they are small) so the phase ``Im(x) l`` carries no float32
    rounding; they are returned in x's dtype.
    """
    tile = min(L, 1 << max(4, math.ceil(math.log2(math.sqrt(L)))))
    n_tiles = math.ceil(L / tile)
    x64 = x.to(torch.complex128)
    j = torch.arange(tile, device=x.device, dtype=torch.float64)
    anchors = torch.arange(n_tiles, device=x.device, dtype=torch.float64) * tile
    inner = torch.exp(x64.unsqueeze(-1) * j).to(x.dtype)
    outer = torch.exp(x64.unsqueeze(1) * anchors[:, None]).to(x.dtype)
    return inner, outer, anchors.to(x.real.dtype)


def vandermonde_torch(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    H = v.shape[0]
    inner, outer, _ = _tiled_powers(x, L)
    outer = v.unsqueeze(1) * outer  # v z^(bT): [H, nT, Np]
    # Re(a b) = Re(a) Re(b) - Im(a) Im(b): one real matmul over the stacked state axis.
    lhs = torch.cat([outer.real, -outer.imag], dim=-1)  # [H, nT, 2Np]
    rhs = torch.cat([inner.real, inner.imag], dim=-2)  # [H, 2Np, T]
    return 2 * torch.bmm(lhs, rhs).reshape(H, -1)[:, :L]


def vandermonde_torch_backward(grad: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                               L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv, dx)`` of :func:`vandermonde_torch` for ``grad [H, L]``: with ``S0 = sum_l g conj(z^l)`` and
    ``S1 = sum_l l g conj(z^l)``, ``dv = 2 S0`` and ``dx = 2 conj(v) S1``."""
    H, Np = v.shape
    inner, outer, anchors = _tiled_powers(x, L)
    n_tiles, tile = outer.shape[1], inner.shape[-1]
    g = F.pad(grad.to(x.real.dtype), (0, n_tiles * tile - L)).reshape(H, n_tiles, tile)
    j = torch.arange(tile, device=g.device, dtype=g.dtype)
    # [g; g j] @ [Re z^j; Im z^j]^T: per tile, sum_j g z^j and sum_j j g z^j over the stacked state axis.
    t = torch.bmm(torch.cat([g, g * j], dim=1), torch.cat([inner.real, inner.imag], dim=1).transpose(1, 2))
    t0 = torch.complex(t[:, :n_tiles, :Np], -t[:, :n_tiles, Np:])  # sum_j g conj(z^j): [H, nT, Np]
    t1 = torch.complex(t[:, n_tiles:, :Np], -t[:, n_tiles:, Np:])
    anchor_conj = outer.conj_physical()
    s0 = (anchor_conj * t0).sum(1)
    s1 = (anchor_conj * (anchors[:, None] * t0 + t1)).sum(1)
    return 2 * s0, 2 * v.conj_physical() * s1


def _chunks(rows: int, Np: int, M: int) -> tuple[range, int]:
    """Chunk starts along the frequency axis and the chunk size bounding the temporaries."""
    step = max(1, CAUCHY_CHUNK_ELEMENTS // max(1, rows * Np))
    return range(0, M, step), step


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v, w complex ``[rows, Np]``, z ``[M]`` -> ``[rows, M]``."""
    rows, Np = v.shape
    starts, step = _chunks(rows, Np, z.shape[0])
    out = torch.empty(rows, z.shape[0], dtype=v.dtype, device=v.device)
    vv, ww = v.unsqueeze(-1), w.unsqueeze(-1)
    for s in starts:
        zc = z[s : s + step]
        out[:, s : s + step] = (vv / (zc - ww) + vv.conj_physical() / (zc - ww.conj_physical())).sum(-2)
    return out


def cauchy_torch_backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                          w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv, dw)`` of :func:`cauchy_torch` (z is constant) for ``grad [rows, M]``, chunked like it."""
    rows, Np = v.shape
    starts, step = _chunks(rows, Np, z.shape[0])
    gv = torch.zeros_like(v)
    gw_sum = torch.zeros_like(w)
    ww = w.unsqueeze(-1)
    for s in starts:
        zc, g = z[s : s + step], grad[:, None, s : s + step]  # g: [rows, 1, m]
        c = 1 / (zc - ww)  # [rows, Np, m]
        d = 1 / (zc - ww.conj_physical())
        gv += (g * c.conj_physical() + g.conj_physical() * d).sum(-1)
        gw_sum += (g * c.conj_physical() ** 2 + g.conj_physical() * d**2).sum(-1)
    return gv, v.conj_physical() * gw_sum


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute dtype of the fused ops: float64 stays, float32/float16/bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def modulated_norm_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, mean, rstd)``: ``LN_C(x) (1 + scale) + shift`` (times ``mask [B, L]``) for x ``[B, C, L]``,
    and the per-step mean and 1/std ``[B, L]`` in the accumulation dtype (float64 for float64, else float32)."""
    B, C, L = x.shape
    acc = accumulation_dtype(x.dtype)
    h, mean, rstd = torch.native_layer_norm(x.to(acc).transpose(1, 2), (C,), None, None, eps)
    h = h.transpose(1, 2) * (1 + scale.to(acc)) + shift.to(acc)
    if mask is not None:
        h = h * mask[:, None, :]
    return h.to(x.dtype).contiguous(), mean.reshape(B, L), rstd.reshape(B, L)


def modulated_norm_torch_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                  mask: torch.Tensor | None, mean: torch.Tensor,
                                  rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dshift, dscale)`` of :func:`modulated_norm_torch`; with ``g = grad * mask``:
    ``dshift = sum_l g``, ``dscale = sum_l g xhat``, and ``dx`` the layer norm's gradient for
    ``dxhat = g (1 + scale)`` (``torch.native_layer_norm_backward``)."""
    B, C, L = x.shape
    acc = mean.dtype
    g = grad.to(acc) if mask is None else grad.to(acc) * mask[:, None, :]
    x_acc = x.to(acc)
    xhat = (x_acc - mean[:, None, :]) * rstd[:, None, :]
    dxhat = (g * (1 + scale.to(acc))).transpose(1, 2)
    dx = torch.ops.aten.native_layer_norm_backward(dxhat, x_acc.transpose(1, 2), (C,), mean[..., None],
                                                   rstd[..., None], None, None, (True, False, False))[0]
    dshift, dscale = g.sum(-1, keepdim=True), (g * xhat).sum(-1, keepdim=True)
    return dx.transpose(1, 2).to(x.dtype).contiguous(), dshift.to(x.dtype), dscale.to(x.dtype)


def gelu_gate_residual_torch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + gate * gelu(y)`` (erf GELU); x, y ``[B, C, L]``, gate ``[B, C, 1]``."""
    acc = accumulation_dtype(x.dtype)
    return (x.to(acc) + gate.to(acc) * F.gelu(y.to(acc))).to(x.dtype)


def gelu_gate_residual_torch_backward(grad: torch.Tensor, y: torch.Tensor,
                                      gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dy, dgate)`` of :func:`gelu_gate_residual_torch`: ``dy = gelu'(y) g gate`` (``gelu_backward``),
    ``dgate = sum_l g gelu(y)``; ``dx`` is ``grad`` itself."""
    acc = accumulation_dtype(y.dtype)
    g, y_acc = grad.to(acc), y.to(acc)
    dy = torch.ops.aten.gelu_backward(g * gate.to(acc), y_acc)
    return dy.to(y.dtype), (g * F.gelu(y_acc)).sum(-1, keepdim=True).to(y.dtype)
