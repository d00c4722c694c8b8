"""DiT-style latent denoiser with adaLN-Zero blocks and a bidirectional S4 as the time mixer.

``Denoiser(x [B, C_latent, L], t [B]) -> [B, C_latent, L]`` (epsilon or v, per the noise schedule).
Timestep -> sinusoidal features -> MLP -> embedding ``[B, E]``; each block maps GELU(embedding) to
shift/scale/gate pairs (zero-initialised, so every block starts as the identity); the output
projection starts scaled by 0.1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.ssm import S4

from .layers import ChannelNorm, PointwiseMLP, apply_mask


@dataclass
class DenoiserConfig:
    """Sizes of the denoiser (defaults: the paper's Lorenz model, 4 blocks x 64 channels)."""

    latent: int = 8
    hidden: int = 64
    n_blocks: int = 4
    d_state: int = 64
    ssm_mode: str = "dplr"
    time_features: int = 256
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("latent", "hidden", "n_blocks", "time_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DenoiserConfig.{name} must be a positive integer, got {value!r}")
        if self.time_features % 2:
            raise ValueError(f"DenoiserConfig.time_features must be even, got {self.time_features}")

    @property
    def embed_dim(self) -> int:
        """Width of the timestep embedding (a quarter of the hidden width, as in the reference)."""
        return max(self.hidden // 4, 8)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of timesteps ``t [B]`` (cosines then sines)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class DenoiserBlock(nn.Module):
    """adaLN-Zero block on ``[B, C, L]`` conditioned on an embedding ``[B, E]``."""

    def __init__(self, channels: int, embed_dim: int, d_state: int, mode: str, backend: str) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(channels, affine=False)
        self.s4 = S4(channels, d_state, mode=mode, bidirectional=True, backend=backend)
        self.norm2 = ChannelNorm(channels, affine=False)
        self.mlp = PointwiseMLP(channels)
        self.modulation = nn.Linear(embed_dim, 6 * channels)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.gelu(emb))[..., None].chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * F.gelu(self.s4(apply_mask(h, mask)))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class Denoiser(nn.Module):
    """``forward(x [B, C_latent, L], t [B], mask [B, L] | None) -> [B, C_latent, L]``."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.time_mlp = nn.Sequential(
            nn.Linear(c.time_features, c.embed_dim), nn.GELU(), nn.Linear(c.embed_dim, c.embed_dim)
        )
        self.inp = nn.Conv1d(c.latent, c.hidden, 1)
        self.blocks = nn.ModuleList(
            DenoiserBlock(c.hidden, c.embed_dim, c.d_state, c.ssm_mode, c.backend) for _ in range(c.n_blocks)
        )
        # No norm before the output projection: a per-step norm there strips the magnitude the noise
        # estimate needs, which leaves residual noise in deterministic (DDIM / DPM-Solver++) samples.
        self.out = nn.Conv1d(c.hidden, c.latent, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.mul_(0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_features(t, self.config.time_features))
        h = self.inp(apply_mask(x, mask))
        for block in self.blocks:
            h = block(h, emb, mask)
        return apply_mask(self.out(h), mask)
