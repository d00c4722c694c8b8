"""Triton backend: launch configurations and launchers for every Triton kernel, forward and backward.

The kernels themselves live in :mod:`.triton_kernels`, imported on first use (:func:`load_kernels`):
importing this module imports no Triton and changes no environment variable. On a machine without
CUDA the first use chooses Triton's interpreter (it sets ``TRITON_INTERPRET=1`` before importing
Triton, which reads it at import); where that is impossible :func:`triton_status` says what to set.

:func:`launch_config` is the one place that sizes a launch (grid, block constexprs, warps): compiled
launches (CUDA tensors) get tiles that fit the register budget, interpreted ones (CPU tensors) few
large program instances. The launchers build a :class:`Launch` and hand it to ``launch`` (by default
:meth:`Launch.run`), so :mod:`.aot` can collect exactly the launches they make and compile them for
GPU targets without a GPU.

Backward kernels write per-program partial sums (``[rows, chunks, Np]`` or ``[B, chunks, C]``) that
torch adds up; no kernel materialises a ``[rows, Np, L]`` product.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

import torch

from .torch_backend import accumulation_dtype

_KERNEL_MODULE = f"{__package__}.triton_kernels"
_TRUE = ("1", "true", "on", "yes", "y")  # the values Triton reads as true


def _triton_installed() -> bool:
    return "triton" in sys.modules or importlib.util.find_spec("triton") is not None


def _interpreter_chosen() -> bool:
    kernels = sys.modules.get(_KERNEL_MODULE)
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE


def triton_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` (compiled on CUDA, interpreted on CPU), and why not."""
    device = torch.device(device)
    if not _triton_installed():
        return False, "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return (True, "") if torch.cuda.is_available() else (False, "CUDA is not available")
    if device.type != "cpu":
        return False, f"Triton kernels run on CUDA or (interpreted) CPU tensors, not {device.type}"
    if _interpreter_chosen():
        return True, ""
    if "triton" in sys.modules:
        return False, ("CPU tensors need the Triton interpreter, but triton was imported without it: set "
                       "TRITON_INTERPRET=1 before anything imports triton, or use backend='torch'")
    if torch.cuda.is_available():
        return False, ("CPU tensors need the Triton interpreter, which would also interpret this process's "
                       "CUDA kernels: set TRITON_INTERPRET=1 to choose it anyway, or use backend='torch'")
    return True, ""  # load_kernels() chooses the interpreter


def load_kernels() -> ModuleType:
    """The kernel module :mod:`.triton_kernels`, imported on first use.

    Without CUDA, and before anything imported Triton, this first sets ``TRITON_INTERPRET=1`` so the
    kernels run on CPU tensors through Triton's interpreter.
    """
    if _KERNEL_MODULE not in sys.modules and "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    from . import triton_kernels

    return triton_kernels


# ---------------------------------------------------------------- launch configuration

_VALUES_PER_WARP = 8 * 32  # elementwise tiles: ~8 values per thread and tensor keep registers low


def _pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


@dataclass(frozen=True)
class LaunchConfig:
    """How one kernel is launched: grid, block-size constexprs and warps per program."""

    grid: tuple[int, ...]
    blocks: dict[str, int]
    num_warps: int = 4


def _vandermonde(interpreted: bool, rows: int, Np: int, L: int, backward: bool) -> LaunchConfig:
    # A program covers BLOCK_T anchors x BLOCK_L positions; tl.dot needs every matmul side >= 16.
    if interpreted:
        block_n, block_l, warps = max(16, _pow2(Np)), _clamp(_pow2(math.ceil(L / 16)), 16, 256), 4
    else:  # the backward's matmuls reduce over BLOCK_L: short tiles keep their operands in registers
        block_n, block_l, warps = 16, 16 if backward else 32, 8
    return LaunchConfig((rows, math.ceil(L / (16 * block_l))),
                        {"BLOCK_N": block_n, "BLOCK_L": block_l, "BLOCK_T": 16}, warps)


def _cauchy(interpreted: bool, rows: int, Np: int, M: int, backward: bool) -> LaunchConfig:
    if interpreted:
        block_n, block_m = min(64, _pow2(Np)), _clamp(_pow2(M), 16, 256)
        tiles = _clamp(math.ceil(M / block_m), 1, 16)
    else:
        block_n, block_m, tiles = min(16, _pow2(Np)), 64, 8
    if not backward:
        return LaunchConfig((rows, math.ceil(M / block_m)), {"BLOCK_N": block_n, "BLOCK_M": block_m})
    return LaunchConfig((rows, math.ceil(M / (block_m * tiles))),
                        {"BLOCK_N": block_n, "BLOCK_M": block_m, "TILES": tiles})


def _modnorm(interpreted: bool, B: int, C: int, L: int, backward: bool) -> LaunchConfig:
    # One program holds all channels of BLOCK_L steps (the norm reduces over channels in registers).
    block_c = _pow2(C)
    if interpreted:
        block_l, warps = _clamp(_pow2(L), 16, 256), 4
        tiles = _clamp(math.ceil(L / block_l), 1, 16)
    else:  # >= 8 steps (32-byte rows), about 8 values per thread and tensor
        block_l = _clamp(2048 // block_c, 8, 64)
        warps = _clamp(block_c * block_l // _VALUES_PER_WARP, 4, 16)
        tiles = max(1, 128 // block_l) if backward else 1  # backward: 128 steps per program
    return LaunchConfig((B, math.ceil(L / (block_l * tiles))),
                        {"BLOCK_C": block_c, "BLOCK_L": block_l, "TILES": tiles}, warps)


def _gelu_gate(interpreted: bool, B: int, C: int, L: int, backward: bool) -> LaunchConfig:
    if interpreted:
        block_c, block_l, warps = min(256, _pow2(C)), _clamp(_pow2(L), 16, 256), 4
        tiles = _clamp(math.ceil(L / block_l), 1, 16)
    else:
        block_c, block_l = min(16, _pow2(C)), 128
        warps = _clamp(block_c * block_l // _VALUES_PER_WARP, 1, 8)
        tiles = 4 if backward else 1  # backward: 512 steps per program
    return LaunchConfig((B, math.ceil(C / block_c), math.ceil(L / (block_l * tiles))),
                        {"BLOCK_C": block_c, "BLOCK_L": block_l, "TILES": tiles}, warps)


_CONFIGS: dict[str, Callable[..., LaunchConfig]] = {
    "vandermonde_fwd": functools.partial(_vandermonde, backward=False),
    "vandermonde_bwd": functools.partial(_vandermonde, backward=True),
    "cauchy_fwd": functools.partial(_cauchy, backward=False),
    "cauchy_bwd": functools.partial(_cauchy, backward=True),
    "modnorm_fwd": functools.partial(_modnorm, backward=False),
    "modnorm_bwd": functools.partial(_modnorm, backward=True),
    "gelu_gate_fwd": functools.partial(_gelu_gate, backward=False),
    "gelu_gate_bwd": functools.partial(_gelu_gate, backward=True),
}


KERNELS = tuple(_CONFIGS)  # every kernel of .triton_kernels that a launcher launches


def launch_config(kernel: str, interpreted: bool, **sizes: int) -> LaunchConfig:
    """Grid, block constexprs and warps of ``kernel`` (a name in :mod:`.triton_kernels`) for ``sizes``.

    ``interpreted``: the launch runs in Triton's interpreter (CPU tensors), else it is compiled (CUDA).
    Sizes: ``rows, Np, L`` (Vandermonde), ``rows, Np, M`` (Cauchy), ``B, C, L`` (fused ops).
    """
    if kernel not in _CONFIGS:
        raise ValueError(f"unknown Triton kernel {kernel!r}; known: {sorted(_CONFIGS)}")
    return _CONFIGS[kernel](interpreted, **sizes)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: kernel name, configuration, runtime arguments and the other constexprs."""

    kernel: str
    config: LaunchConfig
    args: tuple
    constexprs: dict = field(default_factory=dict)

    @property
    def options(self) -> dict:
        """Compile options (FP fusion stated, so Triton does not warn about its changing default)."""
        return {"num_warps": self.config.num_warps, "enable_fp_fusion": True}

    def run(self) -> None:
        """Launch it on its tensors' device (compiling on first use; interpreted for CPU tensors)."""
        fn = getattr(load_kernels(), self.kernel)
        device = next(a.device for a in self.args if isinstance(a, torch.Tensor))
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            fn[self.config.grid](*self.args, **self.config.blocks, **self.constexprs, **self.options)


Launcher = Callable[[Launch], None]


def _config(kernel: str, like: torch.Tensor, **sizes: int) -> LaunchConfig:
    return launch_config(kernel, like.device.type == "cpu", **sizes)


def _new(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Kernel output buffer: NaN-poisoned on CPU (tests see unwritten elements), uninitialised elsewhere."""
    dtype = like.dtype if dtype is None else dtype
    if like.device.type == "cpu":
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _require_int32_rows(C: int, L: int) -> None:
    """The fused kernels address one batch row ``[C, L]`` with int32 offsets."""
    if C * L >= 2**31:
        raise ValueError(f"backend='triton' needs C * L < 2**31 per batch row, got C={C}, L={L}; use backend='torch'")


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.real.contiguous(), t.imag.contiguous()


# ---------------------------------------------------------------- Vandermonde


def vandermonde_triton(v: torch.Tensor, x: torch.Tensor, L: int, launch: Launcher = Launch.run) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    H, Np = v.shape
    out = _new((H, L), v, v.real.dtype)
    config = _config("vandermonde_fwd", v, rows=H, Np=Np, L=L)
    launch(Launch("vandermonde_fwd", config, (*_split(v), *_split(x), out, Np, L)))
    return out


def vandermonde_triton_backward(grad: torch.Tensor, v: torch.Tensor, x: torch.Tensor, L: int,
                                launch: Launcher = Launch.run) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dv, dx)`` of :func:`vandermonde_triton` for the upstream gradient ``grad [H, L]``."""
    H, Np = v.shape
    config = _config("vandermonde_bwd", v, rows=H, Np=Np, L=L)
    chunks = config.grid[1]
    partials = [_new((H, chunks, Np), v, v.real.dtype) for _ in range(4)]
    xr, xi = _split(x)
    launch(Launch("vandermonde_bwd", config, (grad.contiguous(), xr, xi, *partials, Np, L, chunks)))
    s0r, s0i, s1r, s1i = (p.sum(1) for p in partials)
    return 2 * torch.complex(s0r, s0i), 2 * v.conj_physical() * torch.complex(s1r, s1i)


# ---------------------------------------------------------------- Cauchy


def cauchy_triton(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, launch: Launcher = Launch.run) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v, w complex ``[rows, Np]``, z ``[M]`` -> ``[rows, M]``."""
    rows, Np = v.shape
    M = z.shape[0]
    outr, outi = (_new((rows, M), v, v.real.dtype) for _ in range(2))
    config = _config("cauchy_fwd", v, rows=rows, Np=Np, M=M)
    launch(Launch("cauchy_fwd", config, (*_split(v), *_split(w), *_split(z), outr, outi, Np, M)))
    return torch.complex(outr, outi)


def cauchy_triton_backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor,
                           launch: Launcher = Launch.run) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dv, dw)`` of :func:`cauchy_triton` (z is constant) for ``grad [rows, M]``."""
    rows, Np = v.shape
    M = z.shape[0]
    config = _config("cauchy_bwd", v, rows=rows, Np=Np, M=M)
    chunks = config.grid[1]
    partials = [_new((rows, chunks, Np), v, v.real.dtype) for _ in range(4)]
    launch(Launch("cauchy_bwd", config, (*_split(grad), *_split(w), *_split(z), *partials, Np, M, chunks)))
    pvr, pvi, pwr, pwi = (p.sum(1) for p in partials)
    return torch.complex(pvr, pvi), v.conj_physical() * torch.complex(pwr, pwi)


# ---------------------------------------------------------------- fused denoiser-block ops


def modulated_norm_triton(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None,
                          eps: float, launch: Launcher = Launch.run) -> tuple[torch.Tensor, ...]:
    """``(out, mean, rstd)``: out ``[B, C, L]`` as :func:`ldns_fast.kernels.modulated_norm`, the per-step
    mean and 1/std ``[B, L]`` in the accumulation dtype (float64 for float64 x, else float32)."""
    B, C, L = x.shape
    _require_int32_rows(C, L)
    x = x.contiguous()
    out = _new((B, C, L), x)
    mean, rstd = _new((B, L), x, accumulation_dtype(x.dtype)), _new((B, L), x, accumulation_dtype(x.dtype))
    config = _config("modnorm_fwd", x, B=B, C=C, L=L)
    # Without a mask the kernel never reads mask_ptr; x stands in for the pointer.
    args = (x, shift.reshape(B, C).contiguous(), scale.reshape(B, C).contiguous(), x if mask is None else mask,
            out, mean, rstd, C, L, eps)
    launch(Launch("modnorm_fwd", config, args, {"HAS_MASK": mask is not None}))
    return out, mean, rstd


def modulated_norm_triton_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                   mask: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                                   launch: Launcher = Launch.run) -> tuple[torch.Tensor, ...]:
    """Gradients ``(dx, dshift, dscale)`` of :func:`modulated_norm_triton`."""
    B, C, L = x.shape
    x = x.contiguous()
    config = _config("modnorm_bwd", x, B=B, C=C, L=L)
    chunks = config.grid[1]
    dx = _new((B, C, L), x)
    pshift, pscale = (_new((B, chunks, C), x, mean.dtype) for _ in range(2))
    args = (grad.contiguous(), x, scale.reshape(B, C).contiguous(), x if mask is None else mask, mean, rstd,
            dx, pshift, pscale, C, L, chunks)
    launch(Launch("modnorm_bwd", config, args, {"HAS_MASK": mask is not None}))
    return dx, pshift.sum(1).to(x.dtype)[..., None], pscale.sum(1).to(x.dtype)[..., None]


def gelu_gate_residual_triton(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                              launch: Launcher = Launch.run) -> torch.Tensor:
    """``x + gate * gelu(y)`` (erf GELU); x, y ``[B, C, L]``, gate ``[B, C, 1]``."""
    B, C, L = x.shape
    _require_int32_rows(C, L)
    out = _new((B, C, L), x)
    config = _config("gelu_gate_fwd", x, B=B, C=C, L=L)
    tl = load_kernels().tl
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    args = (x.contiguous(), y.contiguous(), gate.reshape(B, C).contiguous(), out, C, L)
    launch(Launch("gelu_gate_fwd", config, args, {"ACC": acc}))
    return out


def gelu_gate_residual_triton_backward(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                                       launch: Launcher = Launch.run) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dy, dgate)`` of :func:`gelu_gate_residual_triton` (``dx`` is ``grad`` itself)."""
    B, C, L = y.shape
    config = _config("gelu_gate_bwd", y, B=B, C=C, L=L)
    chunks = config.grid[2]
    dy = _new((B, C, L), y)
    pgate = _new((B, chunks, C), y, accumulation_dtype(y.dtype))
    args = (grad.contiguous(), y.contiguous(), gate.reshape(B, C).contiguous(), dy, pgate, C, L, chunks)
    launch(Launch("gelu_gate_bwd", config, args))
    return dy, pgate.sum(1).to(y.dtype)[..., None]
