"""The LDNS S4 autoencoder: spike counts ``[B, C_in, L]`` -> latents ``[B, C_latent, L]`` -> Poisson rates.

Encoder: 1x1 conv ``C_in -> C``, ``n_blocks`` S4 blocks, grouped 1x1 bottleneck ``C -> C_latent``.
Decoder: pointwise in time, grouped 1x1 ``C_latent -> C``, GELU, 1x1 ``C -> C_in``, softplus.
Training loss: coordinated dropout with the Poisson NLL on the dropped entries, plus a latent L2 and a
temporal smoothness penalty (see :func:`autoencoder_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.ssm import S4
from ldns_fast.validation import require_positive_ints

from .layers import ChannelNorm, Pointwise, PointwiseMLP, apply_mask


@dataclass
class AutoencoderConfig:
    """Sizes and loss weights of the autoencoder (defaults: the paper's Lorenz model)."""

    n_neurons: int = 128
    hidden: int = 256
    latent: int = 8
    n_blocks: int = 4
    d_state: int = 64
    ssm_mode: str = "dplr"
    bidirectional: bool = True
    coordinated_dropout: float = 0.2
    l2_weight: float = 0.01
    smooth_weight: float = 0.01
    backend: str = "auto"

    def __post_init__(self) -> None:
        require_positive_ints(self, "n_neurons", "hidden", "latent", "n_blocks")
        if self.hidden % self.latent:
            raise ValueError(
                f"hidden ({self.hidden}) must be a multiple of latent ({self.latent}) for the grouped convs"
            )
        if not 0.0 <= self.coordinated_dropout < 1.0:
            raise ValueError(f"coordinated_dropout must be in [0, 1), got {self.coordinated_dropout}")


class S4Block(nn.Module):
    """Residual S4 block on ``[B, C, L]``: norm -> S4 -> GELU -> per-channel scale, then norm -> MLP."""

    def __init__(self, channels: int, d_state: int, mode: str, bidirectional: bool, backend: str) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(channels)
        self.s4 = S4(channels, d_state, mode=mode, bidirectional=bidirectional, backend=backend)
        self.scale = Pointwise(channels, channels, groups=channels)
        self.norm2 = ChannelNorm(channels)
        self.mlp = PointwiseMLP(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.scale(F.gelu(self.s4(apply_mask(self.norm1(x), mask))))
        return x + self.mlp(self.norm2(x))


class Autoencoder(nn.Module):
    """S4 autoencoder; ``forward(spikes [B, C_in, L], mask [B, L]) -> (rates, latents)``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.inp = Pointwise(c.n_neurons, c.hidden)
        self.blocks = nn.ModuleList(
            S4Block(c.hidden, c.d_state, c.ssm_mode, c.bidirectional, c.backend) for _ in range(c.n_blocks)
        )
        self.bottleneck = nn.Conv1d(c.hidden, c.latent, 1, groups=c.latent)
        self.decoder = nn.Sequential(
            nn.Conv1d(c.latent, c.hidden, 1, groups=c.latent),
            nn.GELU(),
            Pointwise(c.hidden, c.n_neurons),
            nn.Softplus(),
        )

    def encode(self, spikes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Spike counts ``[B, C_in, L]`` -> latents ``[B, C_latent, L]`` (zero on padded bins)."""
        x = self.inp(apply_mask(spikes, mask))
        for block in self.blocks:
            x = block(x, mask)
        return apply_mask(self.bottleneck(x), mask)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C_latent, L]`` -> Poisson rates ``[B, C_in, L]`` (pointwise in time)."""
        return self.decoder(latents)

    def forward(self, spikes: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(spikes, mask)
        return self.decode(latents), latents


def smoothness_penalty(latents: torch.Tensor, mask: torch.Tensor | None, max_lag: int = 5) -> torch.Tensor:
    """``sum_{k=1..max_lag} 1/(1+k) * mean ||z_t - z_{t+k}||^2`` over valid pairs; latents ``[B, C, L]``."""
    total = latents.new_zeros(())
    for k in range(1, min(max_lag, latents.shape[-1] - 1) + 1):
        diff = (latents[..., k:] - latents[..., :-k]).square().sum(1)  # [B, L - k]
        if mask is None:
            total = total + diff.mean() / (1 + k)
        else:
            pair = mask[:, k:] * mask[:, :-k]
            total = total + (diff * pair).sum() / pair.sum().clamp_min(1) / (1 + k)
    return total


def autoencoder_loss(
    model: nn.Module,
    config: AutoencoderConfig,
    spikes: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Coordinated-dropout training loss on a batch ``spikes [B, C_in, L]``, ``mask [B, L]``.

    ``model`` is an :class:`Autoencoder` (or a DDP / compiled wrapper of one) built from ``config``.
    Each entry is dropped with probability p and the rest scaled by ``1/(1-p)``; the Poisson NLL is
    taken on the dropped valid entries only (all valid entries when p = 0). Returns a dict with
    ``loss`` (the total) and its parts ``poisson``, ``l2``, ``smooth``.
    """
    c = config
    valid = torch.ones_like(spikes) if mask is None else mask[:, None, :].expand_as(spikes).to(spikes.dtype)
    if c.coordinated_dropout > 0:
        keep = (torch.rand(spikes.shape, generator=generator, device=spikes.device) >= c.coordinated_dropout)
        keep = keep.to(spikes.dtype)
        rates, latents = model(spikes * keep / (1 - c.coordinated_dropout), mask)
        target = valid * (1 - keep)
    else:
        rates, latents = model(spikes, mask)
        target = valid
    nll = F.poisson_nll_loss(rates, spikes, log_input=False, full=False, reduction="none")
    poisson = (nll * target).sum() / target.sum().clamp_min(1)
    latent_valid = valid[:, :1, :]
    l2 = (latents.square() * latent_valid).sum() / (latent_valid.sum() * latents.shape[1]).clamp_min(1)
    smooth = smoothness_penalty(latents, mask)
    loss = poisson + c.l2_weight * l2 + c.smooth_weight * smooth
    return {"loss": loss, "poisson": poisson, "l2": l2, "smooth": smooth}
