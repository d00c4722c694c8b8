"""Triton backend: forward and backward kernels for the Vandermonde and Cauchy products.

Complex numbers travel as separate real and imaginary float tensors. No kernel materialises the
``[H, Np, L]`` (or ``[rows, Np, M]``) product: each program reduces over the state in registers, and the
backward kernels write per-chunk partial sums ``[rows, chunks, Np]`` that torch adds up.

Vandermonde powers are tiled: ``z^(l0 + j) = z^l0 * z^j`` with ``z^j`` computed once per program and the
anchor ``z^l0`` recomputed directly (``exp(x * l0)``) for every tile, so error does not accumulate; the
exponent products are carried exactly (fma two-product), so long kernels keep their phase.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels through the Triton interpreter
(slow: for tests on small shapes).
"""
from __future__ import annotations

import functools
import math
import os
import sys

import torch

# Without a GPU the kernels run in Triton's interpreter, which must be chosen before triton is imported
# (it also swaps triton.language's own jit helpers). A process that imported triton earlier keeps its
# mode; then CPU tensors need TRITON_INTERPRET=1 set by the caller.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only without triton
    triton = None
    _IMPORT_ERROR = str(err)
else:
    _IMPORT_ERROR = ""

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` (compiled on CUDA, interpreted on CPU)."""
    if triton is None:
        return False, f"triton is not installed (pip install triton): {_IMPORT_ERROR}"
    if device.type == "cpu":
        if INTERPRETED:
            return True, ""
        return False, "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"
    if device.type != "cuda":
        return False, f"Triton kernels run on CUDA or (interpreted) CPU tensors, not {device.type}"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, ""


def _kernel(fn):
    """``triton.jit`` when triton is installed (the module still imports without it)."""
    return triton.jit(fn) if triton is not None else fn


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.real.contiguous(), t.imag.contiguous()


def _blocks(device: torch.device, L: int) -> tuple[int, int]:
    """(BLOCK, TILES) along the long axis: wide on GPUs, few program instances when interpreted."""
    if device.type == "cuda":
        return 128, 8
    block = min(256, max(16, triton.next_power_of_2(L)))
    return block, max(1, min(16, math.ceil(L / block)))


# ---------------------------------------------------------------- Vandermonde


@_kernel
def _cexp_scaled(xr, xi, l):
    """``exp(x * l)`` as (re, im) with the products ``x * l`` carried exactly (fma two-product).

    A float32 phase ``Im(x) l`` of thousands of radians would otherwise lose ~1e-4 rad to rounding.
    """
    ph = xi * l
    ph_lo = tl.fma(xi, l, -ph)
    mg = xr * l
    mag = tl.exp(mg) * (1.0 + tl.fma(xr, l, -mg))
    c = tl.cos(ph)
    s = tl.sin(ph)
    return mag * (c - ph_lo * s), mag * (s + ph_lo * c)


@_kernel
def _vandermonde_fwd(vr_ptr, vi_ptr, xr_ptr, xi_ptr, out_ptr, Np, L,
                     BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    h = tl.program_id(0)
    chunk = tl.program_id(1)
    n = tl.arange(0, BLOCK_N)
    nmask = n < Np
    vr = tl.load(vr_ptr + h * Np + n, mask=nmask, other=0.0)
    vi = tl.load(vi_ptr + h * Np + n, mask=nmask, other=0.0)
    xr = tl.load(xr_ptr + h * Np + n, mask=nmask, other=0.0)
    xi = tl.load(xi_ptr + h * Np + n, mask=nmask, other=0.0)
    j = tl.arange(0, BLOCK_L)
    jf = j.to(xr.dtype)
    pr, pi = _cexp_scaled(xr[:, None], xi[:, None], jf[None, :])  # z^j: [BLOCK_N, BLOCK_L]
    for t in tl.static_range(TILES):
        l0 = (chunk * TILES + t) * BLOCK_L
        ar, ai = _cexp_scaled(xr, xi, l0.to(xr.dtype))  # z^l0: [BLOCK_N]
        cr = vr * ar - vi * ai  # v z^l0: [BLOCK_N]
        ci = vr * ai + vi * ar
        k = 2.0 * tl.sum(cr[:, None] * pr - ci[:, None] * pi, axis=0)
        offs = l0 + j
        tl.store(out_ptr + h * L + offs, k, mask=offs < L)


@_kernel
def _vandermonde_bwd(g_ptr, xr_ptr, xi_ptr, s0r_ptr, s0i_ptr, s1r_ptr, s1i_ptr, Np, L, CHUNKS,
                     BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    # Partial sums over this program's L range: S0 = sum_l g conj(z^l), S1 = sum_l l g conj(z^l).
    h = tl.program_id(0)
    chunk = tl.program_id(1)
    n = tl.arange(0, BLOCK_N)
    nmask = n < Np
    xr = tl.load(xr_ptr + h * Np + n, mask=nmask, other=0.0)
    xi = tl.load(xi_ptr + h * Np + n, mask=nmask, other=0.0)
    j = tl.arange(0, BLOCK_L)
    jf = j.to(xr.dtype)
    pr, pi = _cexp_scaled(xr[:, None], xi[:, None], jf[None, :])  # z^j: [BLOCK_N, BLOCK_L]
    s0r = tl.zeros([BLOCK_N], dtype=xr.dtype)
    s0i = tl.zeros([BLOCK_N], dtype=xr.dtype)
    s1r = tl.zeros([BLOCK_N], dtype=xr.dtype)
    s1i = tl.zeros([BLOCK_N], dtype=xr.dtype)
    for t in tl.static_range(TILES):
        l0 = (chunk * TILES + t) * BLOCK_L
        l0f = l0.to(xr.dtype)
        offs = l0 + j
        g = tl.load(g_ptr + h * L + offs, mask=offs < L, other=0.0).to(xr.dtype)
        gj = g * jf
        # T0 = sum_j g_j conj(z^j), T1 = sum_j j g_j conj(z^j)
        t0r = tl.sum(g[None, :] * pr, axis=1)
        t0i = -tl.sum(g[None, :] * pi, axis=1)
        t1r = tl.sum(gj[None, :] * pr, axis=1)
        t1i = -tl.sum(gj[None, :] * pi, axis=1)
        ar, ai = _cexp_scaled(xr, xi, l0f)
        ai = -ai  # conj(z^l0)
        s0r += ar * t0r - ai * t0i
        s0i += ar * t0i + ai * t0r
        ur = l0f * t0r + t1r
        ui = l0f * t0i + t1i
        s1r += ar * ur - ai * ui
        s1i += ar * ui + ai * ur
    dst = (h * CHUNKS + chunk) * Np + n
    tl.store(s0r_ptr + dst, s0r, mask=nmask)
    tl.store(s0i_ptr + dst, s0i, mask=nmask)
    tl.store(s1r_ptr + dst, s1r, mask=nmask)
    tl.store(s1i_ptr + dst, s1i, mask=nmask)


class _VandermondeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
        H, Np = v.shape
        block, tiles = _blocks(v.device, L)
        grid = (H, triton.cdiv(L, block * tiles))
        out = torch.full((H, L), float("nan"), dtype=v.real.dtype, device=v.device)
        _vandermonde_fwd[grid](*_split(v), *_split(x), out, Np, L,
                               BLOCK_N=triton.next_power_of_2(Np), BLOCK_L=block, TILES=tiles)
        ctx.save_for_backward(v, x)
        ctx.L = L
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, x = ctx.saved_tensors
        L = ctx.L
        H, Np = v.shape
        block, tiles = _blocks(v.device, L)
        chunks = triton.cdiv(L, block * tiles)
        partials = [torch.full((H, chunks, Np), float("nan"), dtype=v.real.dtype, device=v.device)
                    for _ in range(4)]
        _vandermonde_bwd[(H, chunks)](grad.contiguous(), *_split(x), *partials, Np, L, chunks,
                                      BLOCK_N=triton.next_power_of_2(Np), BLOCK_L=block, TILES=tiles)
        s0r, s0i, s1r, s1i = (p.sum(1) for p in partials)
        gv = 2 * torch.complex(s0r, s0i)
        gx = 2 * v.conj() * torch.complex(s1r, s1i)
        return gv, gx, None


def vandermonde_triton(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``; v, x complex ``[H, Np]`` -> real ``[H, L]``."""
    return _VandermondeTriton.apply(v, x, L)


# ---------------------------------------------------------------- Cauchy


@_kernel
def _cauchy_fwd(vr_ptr, vi_ptr, wr_ptr, wi_ptr, zr_ptr, zi_ptr, outr_ptr, outi_ptr, Np, M,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    zr = tl.load(zr_ptr + m, mask=mmask, other=0.0)
    zi = tl.load(zi_ptr + m, mask=mmask, other=0.0)
    accr = tl.zeros([BLOCK_M], dtype=zr.dtype)
    acci = tl.zeros([BLOCK_M], dtype=zr.dtype)
    for n0 in range(0, Np, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < Np
        vr = tl.load(vr_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        vi = tl.load(vi_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        wr = tl.load(wr_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        wi = tl.load(wi_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        keep = nmask[:, None] & mmask[None, :]
        dr = zr[None, :] - wr  # z - w and z - conj(w) share the real part
        di1 = zi[None, :] - wi
        di2 = zi[None, :] + wi
        # Padded lanes carry v = 0; give them a unit denominator so they add exact zeros.
        inv1 = 1.0 / tl.where(keep, dr * dr + di1 * di1, 1.0)
        inv2 = 1.0 / tl.where(keep, dr * dr + di2 * di2, 1.0)
        # v / (z - w) + conj(v) / (z - conj w)
        tr = (vr * dr + vi * di1) * inv1 + (vr * dr - vi * di2) * inv2
        ti = (vi * dr - vr * di1) * inv1 - (vr * di2 + vi * dr) * inv2
        accr += tl.sum(tr, axis=0)
        acci += tl.sum(ti, axis=0)
    tl.store(outr_ptr + b * M + m, accr, mask=mmask)
    tl.store(outi_ptr + b * M + m, acci, mask=mmask)


@_kernel
def _cauchy_bwd(gr_ptr, gi_ptr, wr_ptr, wi_ptr, zr_ptr, zi_ptr, pvr_ptr, pvi_ptr, pwr_ptr, pwi_ptr,
                Np, M, CHUNKS, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, TILES: tl.constexpr):
    # Partials over this program's M range, c = 1/(z - w), d = 1/(z - conj w):
    #   Pv = sum_m g conj(c) + conj(g) d,   Pw = sum_m g conj(c)^2 + conj(g) d^2.
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    for n0 in range(0, Np, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < Np
        wr = tl.load(wr_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        wi = tl.load(wi_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        avr = tl.zeros([BLOCK_N], dtype=wr.dtype)
        avi = tl.zeros([BLOCK_N], dtype=wr.dtype)
        awr = tl.zeros([BLOCK_N], dtype=wr.dtype)
        awi = tl.zeros([BLOCK_N], dtype=wr.dtype)
        for t in tl.static_range(TILES):
            m = (chunk * TILES + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            mmask = m < M
            zr = tl.load(zr_ptr + m, mask=mmask, other=0.0)[None, :]
            zi = tl.load(zi_ptr + m, mask=mmask, other=0.0)[None, :]
            gr = tl.load(gr_ptr + b * M + m, mask=mmask, other=0.0)[None, :]
            gi = tl.load(gi_ptr + b * M + m, mask=mmask, other=0.0)[None, :]
            keep = nmask[:, None] & mmask[None, :]
            dr = zr - wr
            di1 = zi - wi
            di2 = zi + wi
            # Padded lanes carry g = 0; a unit denominator makes them add exact zeros.
            inv1 = 1.0 / tl.where(keep, dr * dr + di1 * di1, 1.0)
            inv2 = 1.0 / tl.where(keep, dr * dr + di2 * di2, 1.0)
            # conj(c) = (dr + i di1) inv1 ; d = (dr - i di2) inv2
            ccr = dr * inv1
            cci = di1 * inv1
            ddr = dr * inv2
            ddi = -di2 * inv2
            # g conj(c) + conj(g) d
            vr_ = (gr * ccr - gi * cci) + (gr * ddr + gi * ddi)
            vi_ = (gr * cci + gi * ccr) + (gr * ddi - gi * ddr)
            # g conj(c)^2 + conj(g) d^2
            c2r = ccr * ccr - cci * cci
            c2i = 2.0 * ccr * cci
            d2r = ddr * ddr - ddi * ddi
            d2i = 2.0 * ddr * ddi
            wr_ = (gr * c2r - gi * c2i) + (gr * d2r + gi * d2i)
            wi_ = (gr * c2i + gi * c2r) + (gr * d2i - gi * d2r)
            avr += tl.sum(vr_, axis=1)
            avi += tl.sum(vi_, axis=1)
            awr += tl.sum(wr_, axis=1)
            awi += tl.sum(wi_, axis=1)
        dst = (b * CHUNKS + chunk) * Np + n
        tl.store(pvr_ptr + dst, avr, mask=nmask)
        tl.store(pvi_ptr + dst, avi, mask=nmask)
        tl.store(pwr_ptr + dst, awr, mask=nmask)
        tl.store(pwi_ptr + dst, awi, mask=nmask)


def _cauchy_blocks(device: torch.device, Np: int, M: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_M, TILES) for the Cauchy kernels."""
    block_n = min(64, triton.next_power_of_2(Np))
    if device.type == "cuda":
        return block_n, 64, 4
    block_m = min(256, max(16, triton.next_power_of_2(M)))
    return block_n, block_m, max(1, min(16, math.ceil(M / block_m)))


class _CauchyTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        rows, Np = v.shape
        M = z.shape[0]
        block_n, block_m, _ = _cauchy_blocks(v.device, Np, M)
        outr, outi = (torch.full((rows, M), float("nan"), dtype=v.real.dtype, device=v.device)
                      for _ in range(2))
        _cauchy_fwd[(rows, triton.cdiv(M, block_m))](*_split(v), *_split(w), *_split(z), outr, outi,
                                                     Np, M, BLOCK_N=block_n, BLOCK_M=block_m)
        ctx.save_for_backward(v, z, w)
        return torch.complex(outr, outi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, z, w = ctx.saved_tensors
        rows, Np = v.shape
        M = z.shape[0]
        block_n, block_m, tiles = _cauchy_blocks(v.device, Np, M)
        chunks = triton.cdiv(M, block_m * tiles)
        partials = [torch.full((rows, chunks, Np), float("nan"), dtype=v.real.dtype, device=v.device)
                    for _ in range(4)]
        _cauchy_bwd[(rows, chunks)](*_split(grad), *_split(w), *_split(z), *partials, Np, M, chunks,
                                    BLOCK_N=block_n, BLOCK_M=block_m, TILES=tiles)
        pvr, pvi, pwr, pwi = (p.sum(1) for p in partials)
        return torch.complex(pvr, pvi), None, v.conj() * torch.complex(pwr, pwi)


def cauchy_triton(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sum over conjugate pairs; v, w complex ``[rows, Np]``, z ``[M]`` -> ``[rows, M]``."""
    return _CauchyTriton.apply(v, z, w)
