"""Long convolution of a sequence with an SSM kernel via real FFTs of length ``2L`` (no wrap-around).

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


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` with the kernel ``k [n_kernels, H, L]`` and add ``D [H] * u``.

    ``n_kernels == 1`` is causal; ``n_kernels == 2`` is bidirectional (see :func:`fold_kernel`).
    Returns ``[B, H, L]`` in the promoted dtype of ``u`` and ``k``.
    """
    _check_shapes(u, k, D)
    L = u.shape[-1]
    spectrum = torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(fold_kernel(k), n=2 * L)
    y = torch.fft.irfft(spectrum, n=2 * L)[..., :L]
    if D is not None:
        y = y + D[:, None] * u
    return y
