"""The Triton kernels (device code) of :mod:`ldns_fast.kernels`; launched by :mod:`.triton_backend`.

Importing this module imports Triton and decorates the kernels, so nothing imports it before the first
use of a Triton backend (:func:`.triton_backend.triton_kernels` chooses the interpreter first when it
has to). Block sizes, tiles and warps come from :func:`.triton_backend.launch_config`.

Every loop over tiles is a runtime loop (``range``), never an unrolled ``static_range``, so code size
and register use do not grow with the tile count. Complex numbers travel as separate real and imaginary
tensors; reductions over the state are matmuls (``tl.dot`` in full fp32/fp64 precision, ``"ieee"``)
where the product is one, else broadcast sums over small tiles.
"""
from __future__ import annotations

import triton
import triton.language as tl

INTERPRETED = triton.knobs.runtime.interpret  # how Triton decorated the kernels below (fixed at import)
# Device functions that the kernels below call (inlined into them; never launched on their own).
HELPERS = ("cexp_scaled",)


@triton.jit
def cexp_scaled(xr, xi, l):
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


# ---------------------------------------------------------------- Vandermonde


@triton.jit
def vandermonde_fwd(vr_ptr, vi_ptr, xr_ptr, xi_ptr, out_ptr, Np, L,
                    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr):
    """``K[h, l] = 2 Re(sum_n v z^l)`` for one row ``h`` and ``BLOCK_T`` tiles of ``BLOCK_L`` positions.

    With tile anchors ``l0_t`` and ``z^(l0_t + j) = z^l0_t z^j``: ``K[t, j] = 2 Re(A @ P)`` for
    ``A[t, n] = v_n z_n^l0_t`` (``[BLOCK_T, BLOCK_N]``) and ``P[n, j] = z_n^j`` (``[BLOCK_N, BLOCK_L]``):
    two real matmuls. Every anchor is computed directly (``exp(x l0)``), so no error accumulates.
    """
    h = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    out_ptr += h * L
    t = tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_L)
    l0 = (chunk * BLOCK_T + t) * BLOCK_L
    k = tl.zeros([BLOCK_T, BLOCK_L], dtype=out_ptr.dtype.element_ty)
    for n0 in range(0, Np, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < Np
        vr = tl.load(vr_ptr + h * Np + n, mask=nmask, other=0.0)[None, :]
        vi = tl.load(vi_ptr + h * Np + n, mask=nmask, other=0.0)[None, :]
        xr = tl.load(xr_ptr + h * Np + n, mask=nmask, other=0.0)
        xi = tl.load(xi_ptr + h * Np + n, mask=nmask, other=0.0)
        pr, pi = cexp_scaled(xr[:, None], xi[:, None], j.to(xr.dtype)[None, :])  # z^j
        ar, ai = cexp_scaled(xr[None, :], xi[None, :], l0.to(xr.dtype)[:, None])  # z^l0
        cr = vr * ar - vi * ai  # v z^l0 (padded states have v = 0)
        ci = vr * ai + vi * ar
        k += tl.dot(cr, pr, input_precision="ieee") - tl.dot(ci, pi, input_precision="ieee")
    offs = l0[:, None] + j[None, :]
    tl.store(out_ptr + offs, 2.0 * k, mask=offs < L)


@triton.jit
def vandermonde_bwd(g_ptr, xr_ptr, xi_ptr, s0r_ptr, s0i_ptr, s1r_ptr, s1i_ptr, Np, L, CHUNKS,
                    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr):
    """Partial sums over one program's ``BLOCK_T`` tiles of ``BLOCK_L`` positions:
    ``S0 = sum_l g conj(z^l)``, ``S1 = sum_l l g conj(z^l)``.

    With ``P[j, n] = z_n^j``: ``T0 = G @ conj(P)`` and ``T1 = (G j) @ conj(P)`` (``[BLOCK_T, BLOCK_N]``),
    then ``S0 = sum_t conj(z^l0_t) T0_t`` and ``S1 = sum_t conj(z^l0_t) (l0_t T0_t + T1_t)``.
    """
    h = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    g_ptr += h * L
    t = tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_L)
    l0 = (chunk * BLOCK_T + t) * BLOCK_L
    offs = l0[:, None] + j[None, :]
    g = tl.load(g_ptr + offs, mask=offs < L, other=0.0).to(s0r_ptr.dtype.element_ty)
    jf = j.to(g.dtype)
    gj = g * jf[None, :]
    l0f = l0.to(g.dtype)[:, None]
    for n0 in range(0, Np, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < Np
        xr = tl.load(xr_ptr + h * Np + n, mask=nmask, other=0.0)[None, :]
        xi = tl.load(xi_ptr + h * Np + n, mask=nmask, other=0.0)[None, :]
        pr, pi = cexp_scaled(xr, xi, jf[:, None])  # z^j: [BLOCK_L, BLOCK_N]
        t0r = tl.dot(g, pr, input_precision="ieee")
        t0i = -tl.dot(g, pi, input_precision="ieee")
        t1r = tl.dot(gj, pr, input_precision="ieee")
        t1i = -tl.dot(gj, pi, input_precision="ieee")
        ar, ai = cexp_scaled(xr, xi, l0f)  # z^l0: [BLOCK_T, BLOCK_N]
        ai = -ai
        ur = l0f * t0r + t1r
        ui = l0f * t0i + t1i
        dst = (h * CHUNKS + chunk) * Np + n
        tl.store(s0r_ptr + dst, tl.sum(ar * t0r - ai * t0i, axis=0), mask=nmask)
        tl.store(s0i_ptr + dst, tl.sum(ar * t0i + ai * t0r, axis=0), mask=nmask)
        tl.store(s1r_ptr + dst, tl.sum(ar * ur - ai * ui, axis=0), mask=nmask)
        tl.store(s1i_ptr + dst, tl.sum(ar * ui + ai * ur, axis=0), mask=nmask)


# ---------------------------------------------------------------- Cauchy


@triton.jit
def cauchy_fwd(vr_ptr, vi_ptr, wr_ptr, wi_ptr, zr_ptr, zi_ptr, outr_ptr, outi_ptr, Np, M,
               BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """``r[b, m] = sum_n v/(z_m - w_n) + conj(v)/(z_m - conj(w_n))`` for one row and ``BLOCK_M`` nodes."""
    b = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    zr = tl.load(zr_ptr + m, mask=mmask, other=0.0)[None, :]
    zi = tl.load(zi_ptr + m, mask=mmask, other=0.0)[None, :]
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
        dr = zr - wr  # z - w and z - conj(w) share the real part
        di1 = zi - wi
        di2 = zi + wi
        # Padded lanes carry v = 0; give them a unit denominator so they add exact zeros.
        inv1 = 1.0 / tl.where(keep, dr * dr + di1 * di1, 1.0)
        inv2 = 1.0 / tl.where(keep, dr * dr + di2 * di2, 1.0)
        # v / (z - w) + conj(v) / (z - conj w)
        accr += tl.sum((vr * dr + vi * di1) * inv1 + (vr * dr - vi * di2) * inv2, axis=0)
        acci += tl.sum((vi * dr - vr * di1) * inv1 - (vr * di2 + vi * dr) * inv2, axis=0)
    tl.store(outr_ptr + b * M + m, accr, mask=mmask)
    tl.store(outi_ptr + b * M + m, acci, mask=mmask)


@triton.jit
def cauchy_bwd(gr_ptr, gi_ptr, wr_ptr, wi_ptr, zr_ptr, zi_ptr, pvr_ptr, pvi_ptr, pwr_ptr, pwi_ptr,
               Np, M, CHUNKS, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, TILES: tl.constexpr):
    """Partials over one program's ``TILES * BLOCK_M`` nodes, ``c = 1/(z - w)``, ``d = 1/(z - conj w)``:
    ``Pv = sum_m g conj(c) + conj(g) d`` and ``Pw = sum_m g conj(c)^2 + conj(g) d^2``."""
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    gr_ptr += b * M
    gi_ptr += b * M
    for n0 in range(0, Np, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < Np
        wr = tl.load(wr_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        wi = tl.load(wi_ptr + b * Np + n, mask=nmask, other=0.0)[:, None]
        avr = tl.zeros([BLOCK_N], dtype=wr.dtype)
        avi = tl.zeros([BLOCK_N], dtype=wr.dtype)
        awr = tl.zeros([BLOCK_N], dtype=wr.dtype)
        awi = tl.zeros([BLOCK_N], dtype=wr.dtype)
        for t in range(TILES):
            m = (chunk * TILES + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            mmask = m < M
            zr = tl.load(zr_ptr + m, mask=mmask, other=0.0)[None, :]
            zi = tl.load(zi_ptr + m, mask=mmask, other=0.0)[None, :]
            gr = tl.load(gr_ptr + m, mask=mmask, other=0.0)[None, :]
            gi = tl.load(gi_ptr + m, mask=mmask, other=0.0)[None, :]
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
            avr += tl.sum((gr * ccr - gi * cci) + (gr * ddr + gi * ddi), axis=1)
            avi += tl.sum((gr * cci + gi * ccr) + (gr * ddi - gi * ddr), axis=1)
            # g conj(c)^2 + conj(g) d^2
            c2r = ccr * ccr - cci * cci
            c2i = 2.0 * ccr * cci
            d2r = ddr * ddr - ddi * ddi
            d2i = 2.0 * ddr * ddi
            awr += tl.sum((gr * c2r - gi * c2i) + (gr * d2r + gi * d2i), axis=1)
            awi += tl.sum((gr * c2i + gi * c2r) + (gr * d2i - gi * d2r), axis=1)
        dst = (b * CHUNKS + chunk) * Np + n
        tl.store(pvr_ptr + dst, avr, mask=nmask)
        tl.store(pvi_ptr + dst, avi, mask=nmask)
        tl.store(pwr_ptr + dst, awr, mask=nmask)
        tl.store(pwi_ptr + dst, awi, mask=nmask)


# ---------------------------------------------------------------- fused denoiser-block ops


@triton.jit
def modnorm_fwd(x_ptr, shift_ptr, scale_ptr, mask_ptr, out_ptr, mean_ptr, rstd_ptr, C, L, eps,
                HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    """``LN_C(x) (1 + scale) + shift`` (times the mask) on ``TILES`` tiles ``[BLOCK_C >= C, BLOCK_L]``
    of one batch row; also stores the per-step mean and 1/std (in the accumulation dtype)."""
    acc: tl.constexpr = mean_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    x_ptr += b * C * L  # this batch row; offsets inside it fit in int32 (fewer 64-bit address registers)
    out_ptr += b * C * L
    mask_ptr += b * L
    mean_ptr += b * L
    rstd_ptr += b * L
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    shift = tl.load(shift_ptr + b * C + c, mask=cmask, other=0.0).to(acc)[:, None]
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cmask, other=0.0).to(acc)[:, None]
    for t in range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        lmask = l < L
        keep = cmask[:, None] & lmask[None, :]
        offs = c[:, None] * L + l[None, :]
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(acc)
        mean = tl.sum(x, axis=0) / C
        xc = tl.where(keep, x - mean[None, :], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / C + eps)
        h = xc * rstd[None, :] * gain + shift
        if HAS_MASK:
            h = h * tl.load(mask_ptr + l, mask=lmask, other=0.0).to(acc)[None, :]
        tl.store(out_ptr + offs, h.to(out_ptr.dtype.element_ty), mask=keep)
        tl.store(mean_ptr + l, mean, mask=lmask)
        tl.store(rstd_ptr + l, rstd, mask=lmask)


@triton.jit
def modnorm_bwd(g_ptr, x_ptr, scale_ptr, mask_ptr, mean_ptr, rstd_ptr, dx_ptr, pshift_ptr, pscale_ptr,
                C, L, CHUNKS, HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
                TILES: tl.constexpr):
    """Gradients of :func:`modnorm_fwd`; with ``g = dout * mask`` and ``xhat`` the normalised x:
    ``dshift = sum_l g``, ``dscale = sum_l g xhat`` (per-program partials), ``dxhat = g (1 + scale)``,
    ``dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat))``."""
    acc: tl.constexpr = mean_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    g_ptr += b * C * L  # this batch row; offsets inside it fit in int32
    x_ptr += b * C * L
    dx_ptr += b * C * L
    mask_ptr += b * L
    mean_ptr += b * L
    rstd_ptr += b * L
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cmask, other=0.0).to(acc)[:, None]
    acc_shift = tl.zeros([BLOCK_C], dtype=acc)
    acc_scale = tl.zeros([BLOCK_C], dtype=acc)
    for t in range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        lmask = l < L
        keep = cmask[:, None] & lmask[None, :]
        offs = c[:, None] * L + l[None, :]
        g = tl.load(g_ptr + offs, mask=keep, other=0.0).to(acc)
        if HAS_MASK:
            g = g * tl.load(mask_ptr + l, mask=lmask, other=0.0).to(acc)[None, :]
        mean = tl.load(mean_ptr + l, mask=lmask, other=0.0)
        rstd = tl.load(rstd_ptr + l, mask=lmask, other=0.0)
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(acc)
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


@triton.jit
def gelu_gate_fwd(x_ptr, y_ptr, gate_ptr, out_ptr, C, L, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    """``x + gate * gelu(y)`` (erf GELU) on ``TILES`` tiles ``[BLOCK_C, BLOCK_L]``, computed in ``ACC``."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(2)
    x_ptr += b * C * L  # this batch row; offsets inside it fit in int32
    y_ptr += b * C * L
    out_ptr += b * C * L
    cmask = c < C
    gate = tl.load(gate_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)[:, None]
    for t in range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        keep = cmask[:, None] & (l < L)[None, :]
        offs = c[:, None] * L + l[None, :]
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(ACC)
        y = tl.load(y_ptr + offs, mask=keep, other=0.0).to(ACC)
        gelu = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
        tl.store(out_ptr + offs, (x + gate * gelu).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def gelu_gate_bwd(g_ptr, y_ptr, gate_ptr, dy_ptr, pgate_ptr, C, L, CHUNKS, BLOCK_C: tl.constexpr,
                  BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    """``dy = g gate gelu'(y)`` with ``gelu'(y) = Phi(y) + y phi(y)``; per-program partials of
    ``dgate = sum_l g gelu(y)`` (in the dtype of ``pgate``); ``dx = g`` needs no kernel."""
    acc: tl.constexpr = pgate_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(2)
    g_ptr += b * C * L  # this batch row; offsets inside it fit in int32
    y_ptr += b * C * L
    dy_ptr += b * C * L
    cmask = c < C
    gate = tl.load(gate_ptr + b * C + c, mask=cmask, other=0.0).to(acc)[:, None]
    acc_gate = tl.zeros([BLOCK_C], dtype=acc)
    for t in range(TILES):
        l = (chunk * TILES + t) * BLOCK_L + tl.arange(0, BLOCK_L)
        keep = cmask[:, None] & (l < L)[None, :]
        offs = c[:, None] * L + l[None, :]
        g = tl.load(g_ptr + offs, mask=keep, other=0.0).to(acc)
        y = tl.load(y_ptr + offs, mask=keep, other=0.0).to(acc)
        cdf = 0.5 * (1.0 + tl.erf(y * 0.7071067811865476))
        pdf = tl.exp(-0.5 * y * y) * 0.3989422804014327
        acc_gate += tl.sum(g * y * cdf, axis=1)
        tl.store(dy_ptr + offs, (g * gate * (cdf + y * pdf)).to(dy_ptr.dtype.element_ty), mask=keep)
    tl.store(pgate_ptr + (b * CHUNKS + chunk) * C + c, acc_gate, mask=cmask)
