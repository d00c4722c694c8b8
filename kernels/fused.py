"""Fused elementwise/normalisation steps of the denoiser block, forward and backward.

- :func:`modulated_norm`: ``LN_C(x) * (1 + scale) + shift``, times the validity mask when given (the
  adaLN modulation before the S4 and before the MLP).
- :func:`gelu_gate_residual`: ``x + gate * gelu(y)`` with the exact (erf) GELU (the gated residual
  after the S4).

Sequences are ``[B, C, L]``, per-trial modulation vectors ``[B, C, 1]``, masks ``[B, L]``. Backends:
``"torch"`` (plain torch ops under autograd), ``"triton"`` (one forward and one backward kernel per
function; compiled on CUDA, interpreted on CPU tensors) and ``"auto"`` (Triton on CUDA, else torch).
float16/bfloat16 inputs are computed in float32 and float64 inputs in float64; outputs and gradients
keep the (promoted) input dtype.

Triton layout: a program owns one batch row and a range of time steps, tiled ``[BLOCK_C, BLOCK_L]``
with time contiguous in memory. The norm reduces over all channels in registers (so ``C <= 1024``);
the backward kernels write per-program partial sums over time of the shift/scale/gate gradients,
``[B, chunks, C]``, which torch adds up.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .api import resolve_backend
from .checks import same_device
from .triton_backend import INTERPRETED, _kernel, tl, triton

FUSED_BACKENDS = ("torch", "triton", "auto")
MAX_NORM_CHANNELS = 1024  # channels one Triton program normalises in registers
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------- input checks


def _require_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a float16, bfloat16, float32 or float64 tensor, got dtype {t.dtype}"
        )
    return t


def _check_sequence(name: str, t: object) -> tuple[int, int, int]:
    _require_float(name, t)
    if t.dim() != 3 or min(t.shape) < 1:
        raise ValueError(f"{name} must have shape [B, C, L] with B, C, L >= 1, got {tuple(t.shape)}")
    return tuple(t.shape)


def _check_vector(name: str, t: object, B: int, C: int) -> None:
    _require_float(name, t)
    if tuple(t.shape) != (B, C, 1):
        raise ValueError(f"{name} must have shape [B, C, 1] = {(B, C, 1)}, got {tuple(t.shape)}")


def _check_mask(mask: object, B: int, L: int) -> None:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and mask.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"mask must be a bool or floating-point tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != (B, L):
        raise ValueError(f"mask must have shape [B, L] = {(B, L)}, got {tuple(mask.shape)}")


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in FUSED_BACKENDS:
        raise ValueError(f"unknown fused-kernel backend {backend!r}; choose one of {FUSED_BACKENDS}")
    return resolve_backend(backend, device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- Triton kernels


@_kernel
def _modnorm_fwd(x_ptr, shift_ptr, scale_ptr, mask_ptr, out_ptr, mean_ptr, rstd_ptr, C, L, eps,
                 HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    shift = tl.load(shift_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    for t in tl.static_range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        lmask = l < L
        keep = cmask[:, None] & lmask[None, :]
        offs = b * C * L + c[:, None] * L + l[None, :]
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(ACC)
        mean = tl.sum(x, axis=0) / C
        xc = tl.where(keep, x - mean[None, :], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / C + eps)
        h = xc * rstd[None, :] * gain + shift
        if HAS_MASK:
            h = h * tl.load(mask_ptr + b * L + l, mask=lmask, other=0.0).to(ACC)[None, :]
        tl.store(out_ptr + offs, h.to(out_ptr.dtype.element_ty), mask=keep)
        tl.store(mean_ptr + b * L + l, mean, mask=lmask)
        tl.store(rstd_ptr + b * L + l, rstd, mask=lmask)


@_kernel
def _modnorm_bwd(g_ptr, x_ptr, scale_ptr, mask_ptr, mean_ptr, rstd_ptr, dx_ptr, pshift_ptr, pscale_ptr,
                 C, L, CHUNKS, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    # With g = dout * mask and xhat the normalised x:
    #   dshift = sum_l g,  dscale = sum_l g xhat,  dxhat = g (1 + scale),
    #   dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat)).
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    acc_shift = tl.zeros([BLOCK_C], dtype=ACC)
    acc_scale = tl.zeros([BLOCK_C], dtype=ACC)
    for t in tl.static_range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        lmask = l < L
        keep = cmask[:, None] & lmask[None, :]
        offs = b * C * L + c[:, None] * L + l[None, :]
        g = tl.load(g_ptr + offs, mask=keep, other=0.0).to(ACC)
        if HAS_MASK:
            g = g * tl.load(mask_ptr + b * L + l, mask=lmask, other=0.0).to(ACC)[None, :]
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + b * L + l, mask=lmask, other=0.0)
        rstd = tl.load(rstd_ptr + b * L + l, mask=lmask, other=0.0)
        xhat = tl.where(keep, (x - mean[None, :]) * rstd[None, :], 0.0)
        acc_shift += tl.sum(g, axis=1)
        acc_scale += tl.sum(g * xhat, axis=1)
        dxhat = g * gain
        mean_d = tl.sum(dxhat, axis=0) / C
        mean_dx = tl.sum(dxhat * xhat, axis=0) / C
        dx = rstd[None, :] * (dxhat - mean_d[None, :] - xhat * mean_dx[None, :])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=keep)
    dst = (b * CHUNKS + chunk) * C + c
    tl.store(pshift_ptr + dst, acc_shift, mask=cmask)
    tl.store(pscale_ptr + dst, acc_scale, mask=cmask)


@_kernel
def _gelu_gate_fwd(x_ptr, y_ptr, gate_ptr, out_ptr, C, L, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(2)
    cmask = c < C
    gate = tl.load(gate_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    for t in tl.static_range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        keep = cmask[:, None] & (l < L)[None, :]
        offs = b * C * L + c[:, None] * L + l[None, :]
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(ACC)
        y = tl.load(y_ptr + offs, mask=keep, other=0.0).to(ACC)
        gelu = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
        tl.store(out_ptr + offs, (x + gate * gelu).to(out_ptr.dtype.element_ty), mask=keep)


@_kernel
def _gelu_gate_bwd(g_ptr, y_ptr, gate_ptr, dy_ptr, pgate_ptr, C, L, CHUNKS, ACC: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    # dy = g gate gelu'(y) with gelu'(y) = Phi(y) + y phi(y);  dgate = sum_l g gelu(y);  dx = g (no kernel).
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(2)
    cmask = c < C
    gate = tl.load(gate_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    acc_gate = tl.zeros([BLOCK_C], dtype=ACC)
    for t in tl.static_range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        keep = cmask[:, None] & (l < L)[None, :]
        offs = b * C * L + c[:, None] * L + l[None, :]
        g = tl.load(g_ptr + offs, mask=keep, other=0.0).to(ACC)
        y = tl.load(y_ptr + offs, mask=keep, other=0.0).to(ACC)
        cdf = 0.5 * (1.0 + tl.erf(y * 0.7071067811865476))
        pdf = tl.exp(-0.5 * y * y) * 0.3989422804014327
        acc_gate += tl.sum(g * y * cdf, axis=1)
        tl.store(dy_ptr + offs, (g * gate * (cdf + y * pdf)).to(dy_ptr.dtype.element_ty), mask=keep)
    tl.store(pgate_ptr + (b * CHUNKS + chunk) * C + c, acc_gate, mask=cmask)


def _tiles(device: torch.device, C: int, L: int, all_channels: bool) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_L, TILES, num_warps): modest tiles on GPUs, few program instances when interpreted."""
    c_pow2 = triton.next_power_of_2(C)
    if device.type == "cuda":
        block_c = c_pow2 if all_channels else min(c_pow2, 32)
        block_l = max(16, min(128, 4096 // block_c))
        return block_c, block_l, 1, 4 if block_c * block_l <= 4096 else 8
    block_c = c_pow2 if all_channels else min(c_pow2, 256)
    block_l = min(256, max(16, triton.next_power_of_2(L)))
    return block_c, block_l, max(1, min(16, math.ceil(L / block_l))), 4


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _new(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Kernel output buffer: NaN-poisoned when interpreted (tests see unwritten elements), empty on GPUs."""
    dtype = like.dtype if dtype is None else dtype
    if INTERPRETED:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


class _ModulatedNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        B, C, L = x.shape
        x = x.contiguous()
        scale = scale.reshape(B, C).contiguous()
        block_c, block_l, tiles, warps = _tiles(x.device, C, L, all_channels=True)
        out = _new((B, C, L), x)
        acc = _compute_dtype(x.dtype)
        mean, rstd = _new((B, L), x, acc), _new((B, L), x, acc)
        # Without a mask the kernel never reads mask_ptr; x stands in for the pointer.
        _modnorm_fwd[(B, triton.cdiv(L, block_l * tiles))](
            x, shift.reshape(B, C).contiguous(), scale, x if mask is None else mask, out, mean, rstd,
            C, L, eps, HAS_MASK=mask is not None, ACC=_acc(x.dtype), BLOCK_C=block_c, BLOCK_L=block_l,
            TILES=tiles, num_warps=warps,
        )
        ctx.save_for_backward(x, scale, mask, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale, mask, mean, rstd = ctx.saved_tensors
        B, C, L = x.shape
        block_c, block_l, tiles, warps = _tiles(x.device, C, L, all_channels=True)
        chunks = triton.cdiv(L, block_l * tiles)
        dx = _new((B, C, L), x)
        pshift, pscale = (_new((B, chunks, C), x, mean.dtype) for _ in range(2))
        _modnorm_bwd[(B, chunks)](
            grad.contiguous(), x, scale, x if mask is None else mask, mean, rstd, dx, pshift, pscale,
            C, L, chunks, HAS_MASK=mask is not None, ACC=_acc(x.dtype), BLOCK_C=block_c,
            BLOCK_L=block_l, TILES=tiles, num_warps=warps,
        )
        dshift = pshift.sum(1).to(x.dtype)[..., None]
        dscale = pscale.sum(1).to(x.dtype)[..., None]
        return dx, dshift, dscale, None, None


class _GeluGateResidualTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        B, C, L = x.shape
        y = y.contiguous()
        gate = gate.reshape(B, C).contiguous()
        block_c, block_l, tiles, warps = _tiles(x.device, C, L, all_channels=False)
        out = _new((B, C, L), x)
        grid = (B, triton.cdiv(C, block_c), triton.cdiv(L, block_l * tiles))
        _gelu_gate_fwd[grid](x.contiguous(), y, gate, out, C, L, ACC=_acc(x.dtype), BLOCK_C=block_c,
                             BLOCK_L=block_l, TILES=tiles, num_warps=warps)
        ctx.save_for_backward(y, gate)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, gate = ctx.saved_tensors
        B, C, L = y.shape
        block_c, block_l, tiles, warps = _tiles(y.device, C, L, all_channels=False)
        chunks = triton.cdiv(L, block_l * tiles)
        dy = _new((B, C, L), y)
        pgate = _new((B, chunks, C), y, _compute_dtype(y.dtype))
        _gelu_gate_bwd[(B, triton.cdiv(C, block_c), chunks)](
            grad.contiguous(), y, gate, dy, pgate, C, L, chunks, ACC=_acc(y.dtype), BLOCK_C=block_c,
            BLOCK_L=block_l, TILES=tiles, num_warps=warps,
        )
        return grad, dy, pgate.sum(1).to(y.dtype)[..., None]


# ---------------------------------------------------------------- torch fallbacks


def _modulated_norm_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                          mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    acc = _compute_dtype(x.dtype)
    h = F.layer_norm(x.to(acc).transpose(1, 2), (x.shape[1],), eps=eps).transpose(1, 2)
    h = h * (1 + scale.to(acc)) + shift.to(acc)
    if mask is not None:
        h = h * mask[:, None, :]
    return h.to(x.dtype)


def _gelu_gate_residual_torch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    acc = _compute_dtype(x.dtype)
    return (x.to(acc) + gate.to(acc) * F.gelu(y.to(acc))).to(x.dtype)


# ---------------------------------------------------------------- public entry points


def modulated_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None = None,
    eps: float = 1e-5, backend: str = "auto",
) -> torch.Tensor:
    """adaLN modulation: ``LN_C(x) * (1 + scale) + shift``, zeroed where ``mask`` is 0.

    Args:
        x: ``[B, C, L]`` sequence; the norm is over channels at each time step (no affine parameters).
        shift, scale: ``[B, C, 1]`` per-trial modulation.
        mask: optional ``[B, L]`` validity mask (bool or float; multiplies the output; no gradient).
        eps: variance epsilon (> 0).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (Triton needs ``C <= 1024``).
    Returns:
        ``[B, C, L]`` in the promoted dtype of ``x``, ``shift`` and ``scale``.
    """
    B, C, L = _check_sequence("x", x)
    _check_vector("shift", shift, B, C)
    _check_vector("scale", scale, B, C)
    if mask is not None:
        _check_mask(mask, B, L)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    tensors = dict(x=x, shift=shift, scale=scale)
    if mask is not None:
        tensors["mask"] = mask
    device = same_device(**tensors)
    if backend == "auto" and C > MAX_NORM_CHANNELS:
        backend = "torch"
    backend = _resolve(backend, device)
    if backend == "triton" and C > MAX_NORM_CHANNELS:
        raise ValueError(
            f"backend='triton' normalises all channels in one program and supports C <= "
            f"{MAX_NORM_CHANNELS}, got C={C}; use backend='torch' or 'auto'"
        )
    dtype = torch.promote_types(torch.promote_types(x.dtype, shift.dtype), scale.dtype)
    x, shift, scale = x.to(dtype), shift.to(dtype), scale.to(dtype)
    if mask is not None:
        mask = mask.to(_compute_dtype(dtype)).contiguous()
    if backend == "torch":
        return _modulated_norm_torch(x, shift, scale, mask, float(eps))
    return _ModulatedNormTriton.apply(x, shift, scale, mask, float(eps))


def gelu_gate_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Gated residual ``x + gate * gelu(y)`` with the exact (erf) GELU.

    Args:
        x: ``[B, C, L]`` residual stream.
        y: ``[B, C, L]`` branch output (e.g. the S4's).
        gate: ``[B, C, 1]`` per-trial gate.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    Returns:
        ``[B, C, L]`` in the promoted dtype of ``x``, ``y`` and ``gate``.
    """
    B, C, L = _check_sequence("x", x)
    _require_float("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x {(B, C, L)}, got {tuple(y.shape)}")
    _check_vector("gate", gate, B, C)
    backend = _resolve(backend, same_device(x=x, y=y, gate=gate))
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), gate.dtype)
    x, y, gate = x.to(dtype), y.to(dtype), gate.to(dtype)
    if backend == "torch":
        return _gelu_gate_residual_torch(x, y, gate)
    return _GeluGateResidualTriton.apply(x, y, gate)
