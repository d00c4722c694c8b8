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

from ldns_fast.kernels import gelu_gate_residual, modulated_norm
from ldns_fast.kernels.fused import FUSED_BACKENDS
from ldns_fast.ssm import S4
from ldns_fast.validation import require_positive_ints

from .layers import Pointwise, PointwiseMLP, apply_mask


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
    cond_dim: int = 0  # vector condition per trial (e.g. reach direction [cos, sin]); 0: none
    behavior_channels: int = 0  # time-aligned condition channels (e.g. hand velocity); 0: none
    cond_drop: float = 0.0  # probability of dropping the conditions in training (classifier-free guidance)

    def __post_init__(self) -> None:
        require_positive_ints(self, "latent", "hidden", "n_blocks", "time_features")
        for name in ("cond_dim", "behavior_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"DenoiserConfig.{name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"DenoiserConfig.cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.time_features % 2:
            raise ValueError(f"DenoiserConfig.time_features must be even, got {self.time_features}")

    @property
    def conditional(self) -> bool:
        return self.cond_dim > 0 or self.behavior_channels > 0

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
    """adaLN-Zero block on ``[B, C, L]`` conditioned on an embedding ``[B, E]``, mask ``[B, L]`` optional::

        h = mask * (LN_C(x) * (1 + scale1) + shift1)      # modulated_norm
        x = x + gate1 * gelu(S4(h))                        # gelu_gate_residual
        x = x + gate2 * MLP(LN_C(x) * (1 + scale2) + shift2)

    The norm and gated-residual steps are the fused ops of :mod:`ldns_fast.kernels.fused` (Triton on
    CUDA, torch otherwise; a ``backend`` they lack, such as ``"keops"``, means ``"auto"`` for them).
    They are custom ops, so ``torch.compile`` traces through them on every backend.
    """

    def __init__(self, channels: int, embed_dim: int, d_state: int, mode: str, backend: str) -> None:
        super().__init__()
        self.s4 = S4(channels, d_state, mode=mode, bidirectional=True, backend=backend)
        self.mlp = PointwiseMLP(channels)
        self.modulation = nn.Linear(embed_dim, 6 * channels)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.fused_backend = backend if backend in FUSED_BACKENDS else "auto"

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None = None,
        spectrum: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, C, L]``, ``emb [B, E]``, ``mask [B, L]``; ``spectrum``: see :meth:`S4.forward`."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.gelu(emb))[..., None].chunk(6, dim=1)
        h = modulated_norm(x, shift1, scale1, mask, backend=self.fused_backend)
        y = self.s4(h) if spectrum is None else self.s4(h, spectrum)  # substitutes (export) take u only
        x = gelu_gate_residual(x, y, gate1, backend=self.fused_backend)
        return x + gate2 * self.mlp(modulated_norm(x, shift2, scale2, backend=self.fused_backend))


class Denoiser(nn.Module):
    """``forward(x [B, C_latent, L], t [B], mask [B, L] | None, cond, behavior, keep) -> [B, C_latent, L]``.

    Conditions (when configured): ``cond [B, cond_dim]`` through an MLP added to the timestep embedding;
    ``behavior [B, behavior_channels, L]`` concatenated to the input as clean channels together with an
    indicator channel. ``keep_cond [B]`` and ``keep_behavior [B]`` (bool) mark the trials whose
    conditions are used; a dropped (or None) condition is absent, as trained with independent condition
    dropout for classifier-free guidance, so either kind can also be given alone.

    ``spectra`` (inference): the blocks' S4 kernel spectra for this length, from :meth:`kernel_spectra`.
    A compiled caller passes them so that the kernel cache lookup stays outside the compiled graph.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.time_mlp = nn.Sequential(
            nn.Linear(c.time_features, c.embed_dim), nn.GELU(), nn.Linear(c.embed_dim, c.embed_dim)
        )
        extra = c.behavior_channels + 1 if c.behavior_channels else 0
        self.inp = Pointwise(c.latent + extra, c.hidden)
        if c.cond_dim:
            self.cond_mlp = nn.Sequential(
                nn.Linear(c.cond_dim, c.embed_dim), nn.GELU(), nn.Linear(c.embed_dim, c.embed_dim)
            )
        self.blocks = nn.ModuleList(
            DenoiserBlock(c.hidden, c.embed_dim, c.d_state, c.ssm_mode, c.backend) for _ in range(c.n_blocks)
        )
        # No norm before the output projection: a per-step norm there strips the magnitude the noise
        # estimate needs, which leaves residual noise in deterministic (DDIM / DPM-Solver++) samples.
        self.out = Pointwise(c.hidden, c.latent)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.mul_(0.1)

    def kernel_spectra(self, L: int) -> list[torch.Tensor]:
        """Each block's S4 kernel spectrum ``[C, L + 1]`` for length ``L`` (cached), for ``forward(spectra=...)``."""
        return [block.s4.cached_spectrum(L) for block in self.blocks]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None, behavior: torch.Tensor | None = None,
        keep_cond: torch.Tensor | None = None, keep_behavior: torch.Tensor | None = None,
        spectra: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        c = self.config
        if spectra is not None and len(spectra) != len(self.blocks):
            raise ValueError(
                f"spectra must hold one kernel spectrum per block ({len(self.blocks)}), got {len(spectra)}"
            )
        emb = self.time_mlp(timestep_features(t, c.time_features).to(x.dtype))
        everyone = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if c.cond_dim and cond is not None:
            keep = everyone if keep_cond is None else keep_cond
            emb = emb + self.cond_mlp(cond) * keep[:, None].to(emb.dtype)
        if c.behavior_channels:
            keep = everyone if keep_behavior is None else keep_behavior
            present = keep.to(x.dtype)[:, None, None] if behavior is not None else x.new_zeros(x.shape[0], 1, 1)
            behavior = x.new_zeros(x.shape[0], c.behavior_channels, x.shape[-1]) if behavior is None else behavior
            x = torch.cat([x, behavior * present, present.expand(-1, 1, x.shape[-1])], dim=1)
        h = self.inp(apply_mask(x, mask))
        for i, block in enumerate(self.blocks):
            h = block(h, emb, mask, None if spectra is None else spectra[i])
        return apply_mask(self.out(h), mask)
