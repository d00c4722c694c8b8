"""Building blocks shared by the autoencoder and the denoiser: padding-safe norms and MLPs.

Every block sees sequences ``[B, C, L]`` and an optional validity mask ``[B, L]`` (1 for valid bins).
Padded bins never influence valid ones: norms are per time step, and sequences are zeroed on padding
before every S4 convolution (whose kernel taps are the same for any length).
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelNorm(nn.Module):
    """Layer norm over channels at each time step: ``[B, C, L] -> [B, C, L]`` (causal, padding-safe)."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class PointwiseMLP(nn.Module):
    """Per-time-step MLP ``C -> expansion*C -> C`` with GELU: ``[B, C, L] -> [B, C, L]``."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, expansion * channels, 1),
            nn.GELU(),
            nn.Conv1d(expansion * channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padded bins: ``x [B, C, L] * mask [B, L]`` (no-op when ``mask`` is None)."""
    return x if mask is None else x * mask[:, None, :].to(x.dtype)
