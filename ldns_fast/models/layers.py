"""Building blocks shared by the autoencoder and the denoiser: padding-safe norms and MLPs.

Every block sees sequences ``[B, C, L]`` and an optional validity mask ``[B, L]`` (1 for valid bins).
Padded bins never influence valid ones: norms are per time step, and sequences are zeroed on padding
before every S4 convolution (whose kernel taps are the same for any length).
"""
from __future__ import annotations

import torch
from torch import nn


CONV_MAX_BYTES = 32 * 2**20
"""Largest activation (bytes) with which a training :class:`Pointwise` layer stays a convolution (measured
crossover; glibc maps every block above 32 MiB afresh, so larger activations page-fault on each step)."""


class ChannelNorm(nn.Module):
    """Layer norm over channels at each time step: ``[B, C, L] -> [B, C, L]`` (causal, padding-safe)."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Pointwise(nn.Conv1d):
    """A kernel-size-1 ``Conv1d`` on ``[B, C_in, L] -> [B, C_out, L]`` that picks its training form by size.

    In training, an ungrouped one runs as the convolution while its larger activation (``B * max(C_in, C_out)
    * L`` elements) fits in :data:`CONV_MAX_BYTES`, else as one batched matrix product ``W [C_out, C_in] @ x``;
    a depthwise one (``groups = C_in = C_out``) runs as ``w * x + b``. Measured on 2 CPU cores, forward and
    backward: up to 32 MiB activations the convolution (oneDNN) is 1.3-1.8x faster than the batched product (an
    autoencoder step at 64 x 256 bins: 0.99 -> 0.75 s); at 64 MiB they are even, and beyond the product wins (a
    denoiser step at 64 x 2,048 bins: 2.9 s against 3.8 s). The depthwise form is 1.8x faster than the grouped
    convolution. In eval mode (sampling, export) it is the convolution, so exported graphs keep their ``Conv``
    ops. Parameters and state dicts are ``Conv1d``'s.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self.groups == 1:
            activation = x.shape[0] * max(self.in_channels, self.out_channels) * x.shape[-1] * x.element_size()
            if activation <= CONV_MAX_BYTES:
                return super().forward(x)
            return torch.baddbmm(self.bias[:, None], self.weight[..., 0].expand(x.shape[0], -1, -1), x)
        if self.groups == self.in_channels == self.out_channels:
            return torch.addcmul(self.bias[:, None], self.weight[:, 0], x)
        return super().forward(x)


class PointwiseMLP(nn.Module):
    """Per-time-step MLP ``C -> expansion*C -> C`` with GELU: ``[B, C, L] -> [B, C, L]`` (:class:`Pointwise`
    layers)."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Pointwise(channels, expansion * channels),
            nn.GELU(),
            Pointwise(expansion * channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padded bins: ``x [B, C, L] * mask [B, L]`` (no-op when ``mask`` is None)."""
    return x if mask is None else x * mask[:, None, :].to(x.dtype)
