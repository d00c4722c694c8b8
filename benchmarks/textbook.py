"""The textbook torch forms of the layers around the S4 kernels, for a naive baseline of a whole model.

``backend="naive"`` swaps only the S4 kernels for their materialising formulas; every other layer is still
this library's. A straightforward implementation (the research code, and this library before its training-path
work) writes those layers the plain way, with autograd for every gradient:

- FFT convolution: ``irfft(rfft(u, 2L) rfft(k, 2L))[:L] + D u`` (zero-padded transforms, autograd backward);
- 1x1 layers: ``nn.Conv1d`` (:class:`~ldns_fast.models.layers.Pointwise` keeps the convolution);
- the denoiser's adaLN norm: ``layer_norm`` over channels of the transposed ``[B, L, C]`` sequence, then
  ``* (1 + scale) + shift`` and the mask; its gated residual: ``x + gate * gelu(y)``.

:func:`textbook_layers` puts these in place for the duration of a ``with`` block (the models are unchanged, so
one model serves both baselines). They compute the same functions as the library's forms (checked in
``tests/test_textbook_layers.py``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.models import denoiser, layers
from ldns_fast.ssm import fold_kernel, s4


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """``u [B, H, L]`` convolved with ``k [n_kernels, H, L]`` (causal or bidirectional) plus ``D [H] u``."""
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(fold_kernel(k), n=2 * L), n=2 * L)[..., :L]
    return y if D is None else y + D[:, None] * u


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None = None,
                   eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """``LN_C(x) (1 + scale) + shift`` for ``x [B, C, L]``, ``shift, scale [B, C, 1]``, times ``mask [B, L]``
    (``backend`` is the library's argument, accepted and unused)."""
    h = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=eps).transpose(1, 2) * (1 + scale) + shift
    return h if mask is None else h * mask[:, None, :].to(h.dtype)


def gelu_gate_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``x + gate * gelu(y)`` for ``x, y [B, C, L]`` and ``gate [B, C, 1]`` (``backend`` accepted and unused)."""
    return x + gate * F.gelu(y)


@contextlib.contextmanager
def textbook_layers() -> Iterator[None]:
    """Within the block, S4 layers, 1x1 layers and denoiser blocks use the textbook forms above."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(s4, "fft_conv", fft_conv))
        stack.enter_context(mock.patch.object(layers.Pointwise, "forward", nn.Conv1d.forward))
        stack.enter_context(mock.patch.object(denoiser, "modulated_norm", modulated_norm))
        stack.enter_context(mock.patch.object(denoiser, "gelu_gate_residual", gelu_gate_residual))
        yield
