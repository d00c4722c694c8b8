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


def spectrum_conv(u: torch.Tensor, spectrum: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fft_conv` from a precomputed :func:`kernel_spectrum` ``[H, L + 1]``; ``u [B, H, L]``."""
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * spectrum, n=2 * L)[..., :L]
    return y if D is None else y + D[:, None] * u


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` with the kernel ``k [n_kernels, H, L]`` and add ``D [H] * u``.

    ``n_kernels == 1`` is causal; ``n_kernels == 2`` is bidirectional (see :func:`fold_kernel`).
    Returns ``[B, H, L]`` in the promoted dtype of ``u`` and ``k``.
    """
    _check_shapes(u, k, D)
    return spectrum_conv(u, kernel_spectrum(k), D)


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
