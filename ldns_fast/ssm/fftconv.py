"""Long convolution of a sequence with an SSM kernel: real FFTs of length ``2L`` (no wrap-around), or a
direct Toeplitz product (``O(L^2)``, for short sequences and for export).

Causal (one kernel): ``y[t] = sum_{j<=t} k0[j] u[t-j] + D u[t]``.
Bidirectional (two kernels): additionally ``y[t] += sum_{m>=1} k1[m-1] u[t+m]``; both halves are folded
into one length-``2L`` kernel, so one FFT product does both.
"""
from __future__ import annotations

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


def _spectrum_conv_with_input_spectrum(
    u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spectrum_conv` and the input's spectrum ``rfft(u, 2L)`` ``[B, H, L + 1]`` (for a backward)."""
    L = u.shape[-1]
    U = torch.fft.rfft(u, n=2 * L)
    y = torch.fft.irfft(U * spectrum, n=2 * L)[..., :L]
    return (y if D is None else y + D[:, None] * u), U


def spectrum_conv(u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fft_conv` from a precomputed :func:`kernel_spectrum` ``[H, L + 1]``; ``u [B, H, L]``."""
    return _spectrum_conv_with_input_spectrum(u, spectrum, D)[0]


class _FFTConv(torch.autograd.Function):
    """:func:`fft_conv` with an analytic backward: with ``G = rfft(g, 2L)`` (g zero-padded),
    ``du = irfft(G conj(S))[:L] + D g``, ``dk_folded = irfft(sum_b conj(U) G)`` (the batch summed before
    the inverse FFT: one ``[H, 2L]`` transform) and ``dD = sum_{b,l} g u``. Two batched transforms in the
    backward, against autograd's four and its zero-padded copies of every intermediate."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
        dtype = torch.promote_types(u.dtype, k.dtype)
        u, k = u.to(dtype), k.to(dtype)
        spectrum = kernel_spectrum(k)
        # spectrum_conv's arithmetic, so the cached (inference) path gives the same values
        y, U = _spectrum_conv_with_input_spectrum(u, spectrum, None if D is None else D.to(dtype))
        ctx.n_kernels = k.shape[0]
        ctx.save_for_backward(u, U, spectrum, D)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, U, spectrum, D = ctx.saved_tensors
        L = u.shape[-1]
        need_u, need_k, need_D = ctx.needs_input_grad
        G = torch.fft.rfft(g.to(u.dtype), n=2 * L)
        du = dk = dD = None
        if need_u:
            du = torch.fft.irfft(G * spectrum.conj(), n=2 * L)[..., :L]
            if D is not None:
                du = torch.addcmul(du, D.to(u.dtype)[:, None], g)
        if need_k:
            folded = torch.fft.irfft((U.conj() * G).sum(0), n=2 * L)  # [H, 2L]
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
