"""Long convolution of a sequence with an SSM kernel: real FFTs of length ``2L`` (no wrap-around), or a
direct Toeplitz product (``O(L^2)``, for short sequences and for export).

Causal (one kernel): ``y[t] = sum_{j<=t} k0[j] u[t-j] + D u[t]``.
Bidirectional (two kernels): additionally ``y[t] += sum_{m>=1} k1[m-1] u[t+m]``; both halves are folded
into one length-``2L`` kernel, so one FFT product does both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_shapes(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> None:
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a tensor of shape [B, H, L], got {getattr(u, 'shape', type(u))}")
    _, H, L = u.shape
    if not isinstance(k, torch.Tensor) or k.dim() != 3 or k.shape[0] not in (1, 2) or k.shape[1:] != (H, L):
        raise ValueError(
            f"k must be a tensor of shape [n_kernels, H, L] = [1 or 2, {H}, {L}] to match u {tuple(u.shape)}, "
            f"got {getattr(k, 'shape', type(k))}"
        )
    if D is not None and (not isinstance(D, torch.Tensor) or D.shape != (H,)):
        raise ValueError(f"D must be None or a tensor of shape [H] = [{H}], got {getattr(D, 'shape', type(D))}")


def fold_kernel(k: torch.Tensor) -> torch.Tensor:
    """Kernel ``[n_kernels, H, L]`` -> one length-``2L`` circular kernel ``[H, 2L]``.

    Causal: ``k0`` zero-padded. Bidirectional: ``k1`` reversed into the last ``L`` taps, so tap
    ``2L - m`` (``m = 1..L``) holds ``k1[m - 1]`` and multiplies ``u[t + m]``.
    """
    L = k.shape[-1]
    folded = F.pad(k[0], (0, L))
    if k.shape[0] == 2:
        folded = folded + F.pad(k[1].flip(-1), (L, 0))
    return folded


def kernel_spectrum(k: torch.Tensor) -> torch.Tensor:
    """Kernel ``[n_kernels, H, L]`` -> the real FFT of its folded form, complex ``[H, L + 1]``."""
    return torch.fft.rfft(fold_kernel(k), n=2 * k.shape[-1])


BATCH_PART_BYTES = 4 * 2**20
"""Eager FFT convolutions run over parts of the batch whose input spectra take about this many bytes: each
part's transforms stay in cache and its temporaries are reused from the heap, where one pass over a whole
batch maps (and page-faults) fresh memory for every intermediate above glibc's 32 MiB mmap threshold. Forward
and backward on 2 CPU cores: 3.6x faster at 64 trials x 256 channels x 256 bins, 4.7x at 64 x 64 x 2,048 and
5.7x at 64 x 256 x 2,048 (parts of 1 and 2 MiB were no faster)."""


def batch_parts(u: torch.Tensor) -> list[slice]:
    """Batch slices of ``u [B, H, L]`` for one FFT pass each (:data:`BATCH_PART_BYTES`); one slice when traced by
    ``torch.compile`` or ``torch.export`` (the batch may be symbolic there, and the compiler fuses anyway)."""
    B, H, L = u.shape
    if torch.compiler.is_compiling():
        return [slice(0, B)]
    spectrum_bytes = H * (L + 1) * 2 * u.element_size()
    step = math.ceil(B / min(B, max(1, math.ceil(B * spectrum_bytes / BATCH_PART_BYTES))))
    return [slice(s, s + step) for s in range(0, B, step)]


def _conv_part(u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None,
               U: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spectrum_conv` of ``u [b, H, L]`` and the input spectrum ``rfft(u, 2L)`` ``[b, H, L + 1]`` (written
    into ``U`` when given). The backward's ``du`` is this with the conjugate spectrum."""
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L) if U is None else torch.fft.rfft(u, n=2 * L, out=U)
    y = torch.fft.irfft(U * spectrum, n=2 * L)[..., :L]
    return (y if D is None else torch.addcmul(y, D[:, None], u)), U


def _conv_by_parts(u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None,
                  keep_spectrum: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`spectrum_conv` over :func:`batch_parts`, and the input spectrum ``rfft(u, 2L)`` ``[B, H, L + 1]``
    when ``keep_spectrum`` (for a backward), else None."""
    B, H, L = u.shape
    parts = batch_parts(u)
    U = u.new_empty((B, H, L + 1), dtype=spectrum.dtype) if keep_spectrum else None
    if len(parts) == 1:
        return _conv_part(u, spectrum, D, U)[0], U
    y = torch.empty_like(u)
    for part in parts:
        y[part] = _conv_part(u[part], spectrum, D, None if U is None else U[part])[0]
    return y, U


def spectrum_conv(u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fft_conv` from a precomputed :func:`kernel_spectrum` ``[H, L + 1]``; ``u [B, H, L]``."""
    return _conv_by_parts(u, spectrum, D, keep_spectrum=False)[0]


class _FFTConv(torch.autograd.Function):
    """:func:`fft_conv` with an analytic backward: with ``G = rfft(g, 2L)`` (g zero-padded),
    ``du = irfft(G conj(S))[:L] + D g``, ``dk_folded = irfft(sum_b conj(U) G)`` (the batch summed before
    the inverse FFT: one ``[H, 2L]`` transform) and ``dD = sum_{b,l} g u``. Two batched transforms in the
    backward, against autograd's four and its zero-padded copies of every intermediate. Both directions run
    over :func:`batch_parts`."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
        dtype = torch.promote_types(u.dtype, k.dtype)
        u, k = u.to(dtype), k.to(dtype)
        spectrum = kernel_spectrum(k)
        # spectrum_conv's arithmetic, so the cached (inference) path gives the same values
        y, U = _conv_by_parts(u, spectrum, None if D is None else D.to(dtype), keep_spectrum=True)
        ctx.n_kernels = k.shape[0]
        ctx.save_for_backward(u, U, spectrum, D)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, U, spectrum, D = ctx.saved_tensors
        H, L = u.shape[1:]
        need_u, need_k, need_D = ctx.needs_input_grad
        g = g.to(u.dtype)
        D_u = None if D is None else D.to(u.dtype)
        parts = batch_parts(u)
        du = torch.empty_like(u) if need_u and len(parts) > 1 else None
        dk = dD = None
        spectrum_conj = spectrum.conj_physical()
        total = U.new_zeros((H, L + 1)) if need_k else None  # sum_b conj(U) G
        for part in parts:
            if need_u:
                du_part, G = _conv_part(g[part], spectrum_conj, D_u)
                if du is None:
                    du = du_part
                else:
                    du[part] = du_part
            else:
                G = torch.fft.rfft(g[part], n=2 * L)
            if need_k:
                total += U[part].conj_physical().mul_(G).sum(0)
        if need_k:
            folded = torch.fft.irfft(total, n=2 * L)  # [H, 2L]
            dk = folded[None, :, :L] if ctx.n_kernels == 1 else torch.stack([folded[:, :L], folded[:, L:].flip(-1)])
        if need_D:
            dD = (g * u).sum((0, 2)).to(D.dtype)
        return du, dk, dD


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` with the kernel ``k [n_kernels, H, L]`` and add ``D [H] * u``.

    ``n_kernels == 1`` is causal; ``n_kernels == 2`` is bidirectional (see :func:`fold_kernel`).
    Returns ``[B, H, L]`` in the promoted dtype of ``u`` and ``k``; differentiable in all three (an
    analytic backward, :class:`_FFTConv`).
    """
    _check_shapes(u, k, D)
    return _FFTConv.apply(u, k, D)


def toeplitz(k: torch.Tensor) -> torch.Tensor:
    """Kernel ``[n_kernels, H, L]`` -> ``T [H, L, L]`` with ``T[h, i, j] = folded[h, (i - j) mod 2L]``."""
    L = k.shape[-1]
    position = torch.arange(L, device=k.device)
    lag = position[:, None] - position[None, :]
    lag = torch.where(lag < 0, lag + 2 * L, lag)  # (i - j) mod 2L
    return fold_kernel(k)[:, lag]


def toeplitz_conv(u: torch.Tensor, T: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`direct_conv` from a precomputed :func:`toeplitz` ``[H, L, L]``; ``u [B, H, L]``."""
    y = torch.matmul(u.transpose(0, 1), T.transpose(1, 2)).transpose(0, 1)
    return y if D is None else y + D[:, None] * u


def direct_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fft_conv` as a Toeplitz matrix product (:func:`toeplitz`): ``O(B H L^2)`` work, no FFT."""
    _check_shapes(u, k, D)
    return toeplitz_conv(u, toeplitz(k), D)
