"""Fused elementwise/normalisation steps of the denoiser block, forward and backward.

- :func:`modulated_norm`: ``LN_C(x) * (1 + scale) + shift``, times the validity mask when given (the
  adaLN modulation before the S4 and before the MLP).
- :func:`gelu_gate_residual`: ``x + gate * gelu(y)`` with the exact (erf) GELU (the gated residual
  after the S4).

Sequences are ``[B, C, L]``, per-trial modulation vectors ``[B, C, 1]``, masks ``[B, L]``. Backends:
``"torch"`` (torch ops, analytic gradients), ``"triton"`` (one forward and one backward kernel per
function; compiled on CUDA, interpreted on CPU tensors) and ``"auto"`` (Triton on CUDA, else torch),
all behind the custom ops of :mod:`.ops` (so ``torch.compile`` traces them without graph breaks).
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

from ldns_fast.validation import is_number

from . import ops
from .api import resolve_backend
from .checks import same_device
from .torch_backend import accumulation_dtype

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
    if not is_number(eps) or not 0 < eps < math.inf:
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
        mask = mask.to(accumulation_dtype(dtype)).contiguous()
    return ops.modulated_norm(x, shift, scale, mask, float(eps), backend)[0]


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
    return ops.gelu_gate_residual(x, y, gate, backend)
