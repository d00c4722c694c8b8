"""Plain-torch backend: exact formulas with bounded memory, float64-capable, forward and backward.

Vandermonde: powers are split as ``z^(bT + j) = z^(bT) z^j`` so the sum over the state becomes one real
batched matmul ``[H, L/T, 2Np] @ [H, 2Np, T]`` (memory O(H Np (T + L/T)) instead of O(H Np L)); the
backward is the same split with the roles of state and position swapped.
Cauchy: the poles are shared by several rows (the DPLR kernel's four Woodbury terms and its directions), so
the Cauchy matrices ``[P, Np, M]`` are built once and applied to every row by complex batched matmuls; the
frequency axis is processed in chunks, forward and backward, so no ``[R, P, Np, M]`` tensor is ever held.
Fused denoiser-block ops: channel statistics reduced over the channel axis of ``[B, C, L]`` plus elementwise
ops, analytic gradients.

Each ``<op>_torch`` has an ``<op>_torch_backward``; :mod:`.ops` wires them into autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Complex elements of the Cauchy loops' temporaries ([P, Np, chunk] each) per chunk of frequencies.
CAUCHY_CHUNK_ELEMENTS = 1 << 21


def _tiled_powers(x: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z^j [H, Np, T], z^(bT) [H, nT, Np], anchors bT [nT])`` for ``z = exp(x)``, ``nT T >= L``.

    The powers are evaluated in complex128 (they are small) so the phase ``Im(x) l`` carries no float32
    rounding; they are returned in x's dtype.
    """
    tile = min(L, 1 << max(4, math.ceil(math.log2(math.sqrt(L)))))
    n_tiles = math.ceil(L / tile)
    j = torch.arange(tile, device=x.device, dtype=torch.float64)
    anchors = torch.arange(n_tiles, device=x.device, dtype=torch.float64) * tile
    inner = _complex_exp(x.unsqueeze(-1), j)
    outer = _complex_exp(x.unsqueeze(1), anchors[:, None])
    return inner, outer, anchors.to(x.real.dtype)


def _complex_exp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``exp(x t)`` in x's dtype for complex x and real float64 t (broadcast), evaluated as
    ``exp(Re) (cos + i sin)`` in float64 (twice as fast on CPU as a complex128 exp, same values)."""
    x64 = x.to(torch.complex128)
    magnitude, phase = torch.exp(x64.real * t), x64.imag * t
    return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)).to(x.dtype)


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


def _frequency_step(P: int, Np: int, temporaries: int) -> int:
    """Frequencies per chunk so that ``temporaries`` complex ``[P, Np, chunk]`` tensors stay bounded."""
    return max(1, CAUCHY_CHUNK_ELEMENTS // max(1, temporaries * P * Np))


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v ``[R, P, Np]``, poles w ``[P, Np]`` shared by the R rows, z ``[M]``
    -> ``[R, P, M]``.

    With ``A = 1/(z - w)`` and ``A' = 1/(conj(z) - w)`` (``[P, Np, M]``, built once per chunk of
    frequencies for all R rows), ``conj(v)/(z - conj(w)) = conj(v A')``, so the sum is two complex batched
    matmuls ``v A + conj(v A')``.
    """
    R, P, Np = v.shape
    M = z.shape[0]
    step = _frequency_step(P, Np, 2)
    out = torch.empty(R, P, M, dtype=v.dtype, device=v.device)
    rows, poles = v.transpose(0, 1), w.unsqueeze(-1)  # [P, R, Np], [P, Np, 1]
    for s in range(0, M, step):
        zc = z[s : s + step]
        direct, mirrored = torch.sub(zc, poles).reciprocal_(), torch.sub(zc.conj_physical(), poles).reciprocal_()
        part = torch.bmm(rows, direct) + torch.bmm(rows, mirrored).conj_physical()  # [P, R, m]
        out[:, :, s : s + step] = part.transpose(0, 1)
    return out


def cauchy_torch_backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                          w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv [R, P, Np], dw [P, Np])`` of :func:`cauchy_torch` (z is constant) for ``grad [R, P, M]``.

    ``dv = g conj(A)^T + conj(g A'^T)`` and ``dw = sum_r conj(v) (g conj(A^2)^T + conj(g A'^2^T))``: four
    batched matmuls of ``g`` with ``[conj A, A', conj A^2, A'^2]``, each term written in place into its own
    contiguous ``[P, m, Np]`` block (10-25% faster than one matmul over the terms interleaved along the state).
    """
    R, P, Np = v.shape
    M = z.shape[0]
    step = _frequency_step(P, Np, 8)
    g = grad.transpose(0, 1).to(v.dtype)  # [P, R, M]
    sums = torch.zeros(4, P, R, Np, dtype=v.dtype, device=v.device)
    poles, poles_conj = w.unsqueeze(-2), w.conj_physical().unsqueeze(-2)  # [P, 1, Np]
    terms = torch.empty(4, P, min(step, M), Np, dtype=v.dtype, device=v.device)
    for s in range(0, M, step):
        zc = z[s : s + step, None].conj_physical()
        part = terms[:, :, : zc.shape[0]]  # [conj A, A', conj A^2, A'^2], [4, P, m, Np]
        torch.sub(zc, poles_conj, out=part[0]).reciprocal_()
        torch.sub(zc, poles, out=part[1]).reciprocal_()
        torch.mul(part[:2], part[:2], out=part[2:])
        for total, term in zip(sums, part):
            total.baddbmm_(g[:, :, s : s + step], term)
    s0, s1, s2, s3 = sums  # each [P, R, Np]
    dv = s0 + s1.conj_physical()
    dw = (v.transpose(0, 1).conj_physical() * (s2 + s3.conj_physical())).sum(1)
    return dv.transpose(0, 1).contiguous(), dw


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute dtype of the fused ops: float64 stays, float32/float16/bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def modulated_norm_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, mean, rstd)``: ``LN_C(x) (1 + scale) + shift`` (times ``mask [B, L]``) for x ``[B, C, L]``,
    and the per-step mean and 1/std ``[B, L]`` in the accumulation dtype (float64 for float64, else float32).

    Computed in the ``[B, C, L]`` layout (statistics reduced over the channel axis): no transposed copies,
    which at 2,048 bins cost more than the norm itself (64 channels, forward and backward: 245 -> 90 ms at
    2,048 bins, 7.5 -> 3.2 ms at 256).
    """
    acc = accumulation_dtype(x.dtype)
    x_acc = x.to(acc)
    # Two passes (mean, then the centred square): torch.var_mean over the channel axis measured 25x slower
    # than a mean over it on CPU ([64, 64, 2,048]: 34 ms against 1.3 ms).
    mean = x_acc.mean(1, keepdim=True)  # [B, 1, L]
    xhat = x_acc - mean
    rstd = torch.rsqrt(xhat.square().mean(1, keepdim=True) + eps)
    xhat.mul_(rstd)
    h = torch.addcmul(shift.to(acc), xhat, 1 + scale.to(acc))
    if mask is not None:
        h = h.mul_(mask[:, None, :])
    return h.to(x.dtype), mean[:, 0], rstd[:, 0]


def modulated_norm_torch_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                  mask: torch.Tensor | None, mean: torch.Tensor,
                                  rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dshift, dscale)`` of :func:`modulated_norm_torch`; with ``g = grad * mask`` and
    ``dxhat = g (1 + scale)``: ``dshift = sum_l g``, ``dscale = sum_l g xhat`` and the layer norm's
    ``dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat))``, all in the ``[B, C, L]`` layout."""
    acc = mean.dtype
    g = grad.to(acc) if mask is None else grad.to(acc) * mask[:, None, :]
    mean, rstd = mean[:, None, :], rstd[:, None, :]
    gain = 1 + scale.to(acc)
    xhat = (x.to(acc) - mean).mul_(rstd)
    g_xhat = g * xhat
    dshift, dscale = g.sum(-1, keepdim=True), g_xhat.sum(-1, keepdim=True)
    dxhat = g * gain
    dxhat_mean, dxhat_xhat_mean = dxhat.mean(1, keepdim=True), g_xhat.mul_(gain).mean(1, keepdim=True)
    dx = dxhat.sub_(dxhat_mean).addcmul_(xhat, dxhat_xhat_mean, value=-1).mul_(rstd)
    return dx.to(x.dtype), dshift.to(x.dtype), dscale.to(x.dtype)


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
