"""pykeops backend: the S4 kernels as lazy symbolic reductions (no ``[H, Np, L]`` tensor is built).

Complex numbers are carried as real LazyTensors (``(re, im)`` pairs, or dim-2 vectors), so the formulas
run in the input's real precision: float32 for complex64, float64 for complex128 (KeOps supports both).
Each kernel's ``*_backward`` is one KeOps reduction of the analytic gradients (torch's convention: for
a real loss the gradient is the conjugate Wirtinger derivative); :mod:`.ops` wires them into autograd.
The leading axis (``H`` or ``rows``) is a KeOps batch dimension; KeOps runs on the tensors' device
(OpenMP loops on CPU, CUDA on GPU). pykeops is imported lazily and its console messages (CUDA
warnings, compile notices) are muted while this module calls it; formulas compile on first use
and are cached on disk (``~/.cache/keops<version>``).
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
from typing import Iterator

import torch

from .reference import cauchy_naive, vandermonde_naive

Pair = tuple  # (re, im) of real LazyTensors


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Import pykeops with stdout captured and mute its messages for the duration of the block."""
    with contextlib.redirect_stdout(io.StringIO()):
        import keopscore
        import pykeops
    saved = pykeops.verbose, keopscore.verbose
    pykeops.verbose = keopscore.verbose = False
    try:
        yield
    finally:
        pykeops.verbose, keopscore.verbose = saved


def _lazy(t: torch.Tensor, axis: int):
    """Real ``[B, K(, D)]`` -> KeOps variable ``[B, K, 1, D]`` (axis 1: i) or ``[B, 1, K, D]`` (axis 2: j)."""
    from pykeops.torch import LazyTensor

    t = t.unsqueeze(-1) if t.dim() == 2 else t
    return LazyTensor(t.unsqueeze(3 - axis).contiguous())


def _pair(t: torch.Tensor, axis: int) -> Pair:
    """Complex ``[B, K]`` tensor -> (re, im) KeOps variables on ``axis`` (see ``_lazy``)."""
    return _lazy(t.real, axis), _lazy(t.imag, axis)


def _mul(a: Pair, b: Pair) -> Pair:
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _conj(a: Pair) -> Pair:
    return a[0], -a[1]


def _inv(a: Pair) -> Pair:
    norm = a[0] * a[0] + a[1] * a[1]
    return a[0] / norm, -a[1] / norm


def _sum_j(*terms) -> torch.Tensor:
    """Concatenate scalar LazyTensors and sum over the j axis -> ``[B, I, len(terms)]``."""
    formula = terms[0]
    for t in terms[1:]:
        formula = formula.concat(t)
    return formula.sum(dim=2)


def _two(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """Pad a size-1 last axis to 2 with zeros (or a copy): KeOps reads ``[B, 1, 1, D]`` as a parameter."""
    return torch.cat([t, t if copy else torch.zeros_like(t)], -1) if t.shape[-1] == 1 else t


def _arange(n: int, like: torch.Tensor) -> torch.Tensor:
    """``[1, max(n, 2)]`` real positions ``0, 1, ...`` in the real dtype of complex ``like``."""
    return torch.arange(max(n, 2), device=like.device, dtype=like.real.dtype).unsqueeze(0)


def _powers(x: torch.Tensor, L: int, l, axis: int):
    """``[Re, Im]`` of ``exp(x l)`` as one dim-2 LazyTensor; x complex ``[H, Np]`` on ``axis``, l positions.

    The phase ``Im(x) l`` is reduced exactly: in turns ``beta = Im(x) / 2 pi = hi + lo`` where ``hi`` has
    few enough mantissa bits that ``hi l`` is exact for ``l < L``, so ``hi l - round(hi l) + lo l`` keeps
    full precision even where ``Im(x) l`` is far beyond ``2 pi`` (plain float32 loses ~1e-4 rad there).
    Exp, Round and the phase appear once in the formula (KeOps does not share repeated subformulas).
    """
    beta = x.imag.double() / (2 * math.pi)
    bits = 1 - round(math.log2(torch.finfo(x.real.dtype).eps)) - (L - 1).bit_length()
    mant, expo = torch.frexp(beta)
    hi = torch.ldexp(torch.round(mant * 2.0**bits), expo - bits)
    a, hi, lo = (_lazy(t.to(x.real.dtype), axis) for t in (x.real, hi, beta - hi))
    turns = hi * l
    phase = (turns - turns.round() + lo * l) * (2 * math.pi)
    return (a * l).exp() * (phase + [0.0, -math.pi / 2]).cos()  # cos(p - pi/2) = sin(p)


def vandermonde_keops(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    if v.numel() == 0:  # KeOps crashes on empty axes; the naive formula is free here
        return vandermonde_naive(v, x, L)
    v, x = _two(v), _two(x)
    with _quiet():
        zl = _powers(x, L, _lazy(_arange(L, x), 1), 2)  # l on i: [1, L, 1, 1]; x on j: [H, 1, Np, 1]
        out = (zl | _lazy(torch.stack([v.real, -v.imag], -1), 2)).sum(dim=2)  # Re(v z^l)
    return 2 * out[:, :L, 0]


def vandermonde_keops_backward(grad: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                               L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv, dx)`` of :func:`vandermonde_keops` for ``grad [H, L]`` (one reduction)."""
    if v.numel() == 0:
        return torch.zeros_like(v), torch.zeros_like(x)
    g = _two(grad.to(x.real.dtype))
    pos = _arange(g.shape[1], x)
    with _quiet():
        zl = _powers(_two(x), g.shape[1], _lazy(pos, 2), 1)  # x on i: [H, Np, 1, 1]; l on j
        gl = _lazy(torch.stack([g, g * pos], -1), 2)  # j: [H, 1, L, 2]
        s = zl.tensorprod(gl).sum(dim=2)[:, : v.shape[1]]  # [H, Np, 4]: Re z^l (g, l g), Im z^l (g, l g)
    # sum_l g conj(z^l), and the same weighted by l.
    return 2 * torch.complex(s[..., 0], -s[..., 2]), 2 * v.conj_physical() * torch.complex(s[..., 1], -s[..., 3])


def cauchy_keops(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v, w complex ``[rows, Np]``, z ``[M]`` -> ``[rows, M]``."""
    if v.numel() == 0 or z.numel() == 0:  # KeOps crashes on empty axes; the naive formula is free here
        return cauchy_naive(v, z, w)
    with _quiet():
        zz = _pair(_two(z.unsqueeze(0), copy=True), 1)  # i: [1, M, 1, 1]
        vv, ww = _pair(_two(v), 2), _pair(_two(w, copy=True), 2)  # j: [rows, 1, Np, 1]
        c = _inv((zz[0] - ww[0], zz[1] - ww[1]))
        d = _inv((zz[0] - ww[0], zz[1] + ww[1]))
        t1, t2 = _mul(vv, c), _mul(_conj(vv), d)
        s = _sum_j(t1[0] + t2[0], t1[1] + t2[1])  # [rows, M, 2]
    return torch.view_as_complex(s[:, : z.shape[0]].contiguous())


def cauchy_keops_backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                          w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv, dw)`` of :func:`cauchy_keops` (z is constant) for ``grad [rows, M]`` (one reduction)."""
    if v.numel() == 0 or z.numel() == 0:
        return torch.zeros_like(v), torch.zeros_like(w)
    with _quiet():
        zz = _pair(_two(z.unsqueeze(0), copy=True), 2)  # j: [1, 1, M, 1]
        gg = _pair(_two(grad.to(v.dtype)), 2)  # j: [rows, 1, M, 1]
        ww = _pair(_two(w, copy=True), 1)  # i: [rows, Np, 1, 1]
        cc = _conj(_inv((zz[0] - ww[0], zz[1] - ww[1])))  # conj(1/(z - w))
        d = _inv((zz[0] - ww[0], zz[1] + ww[1]))  # 1/(z - conj(w))
        gc, gd = _mul(gg, cc), _mul(_conj(gg), d)
        gc2, gd2 = _mul(gc, cc), _mul(gd, d)
        s = _sum_j(gc[0] + gd[0], gc[1] + gd[1], gc2[0] + gd2[0], gc2[1] + gd2[1])[:, : v.shape[1]]
    return torch.complex(s[..., 0], s[..., 1]), v.conj_physical() * torch.complex(s[..., 2], s[..., 3])


@functools.cache
def _status(device_type: str) -> tuple[bool, str]:
    try:
        with _quiet():
            import pykeops
    except ImportError:
        return False, "pykeops is not installed (pip install pykeops)"
    except Exception as err:  # pykeops probes compilers and CUDA at import time
        return False, f"pykeops failed to import: {type(err).__name__}: {err}"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "torch cannot see a CUDA device"
        if not pykeops.config.pykeops_cuda.get_use_cuda():
            why = pykeops.config.pykeops_cuda.cuda_message
            return False, f"pykeops cannot use CUDA: {why or 'CUDA support is disabled'}"
    elif device_type != "cpu":
        return False, f"pykeops runs only on cpu and cuda tensors, not {device_type}"
    gen = torch.Generator().manual_seed(0)
    v, x = (torch.randn(2, 3, dtype=torch.complex64, generator=gen) for _ in range(2))
    x = torch.complex(-x.real.abs(), x.imag)
    try:
        out = vandermonde_keops(v.to(device_type), x.to(device_type), 5).cpu()
    except Exception as err:  # compile or runtime failure: report it rather than crash
        return False, f"pykeops test reduction failed: {type(err).__name__}: {str(err)[-800:]}"
    ref = vandermonde_naive(v, x, 5)
    if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
        return False, f"pykeops test reduction gave wrong values (max error {(out - ref).abs().max():.3g})"
    return True, ""


def keops_status(device: torch.device) -> tuple[bool, str]:
    """Whether pykeops can run on ``device`` (checked once per device type by a tiny real reduction)."""
    return _status(torch.device(device).type)
