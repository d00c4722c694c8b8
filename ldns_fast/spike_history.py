"""Spike-history observation model fitted on top of the autoencoder's rates.

Per neuron ``i`` with history length ``K``::

    lambda[i, t] = softplus(sum_{k=1..K} h[i, k] * s[i, t-k] + w[i] * log r[i, t] + b[i])

where ``r`` are per-bin rates ``[B, N, T]`` (from the autoencoder), ``s`` spike counts ``[B, N, T]``
clipped at ``clip`` in the history, and the history is zero before the first bin. Padded bins
(``mask == 0``) contribute nothing: they are left out of the loss, their intensity and sampled
counts are zero and their counts never enter the history.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SpikeHistoryConfig:
    """History length ``K``, history count clip, L2 penalty on ``h`` and LBFGS iterations."""

    history: int = 20
    clip: int = 5
    l2: float = 1e-4
    max_iter: int = 200


class SpikeHistoryModel(nn.Module):
    """Per-neuron history filters ``h [N, K]``, rate gains ``w [N]`` (init 1) and offsets ``b [N]`` (init 0).

    ``clip`` is a buffer, so a saved ``state_dict`` restores it together with the parameters.
    """

    def __init__(self, n_neurons: int, history: int = 20, clip: int = 5) -> None:
        super().__init__()
        for name, value in (("n_neurons", n_neurons), ("history", history), ("clip", clip)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.h = nn.Parameter(torch.zeros(n_neurons, history))
        self.w = nn.Parameter(torch.ones(n_neurons))
        self.b = nn.Parameter(torch.zeros(n_neurons))
        self.register_buffer("clip", torch.tensor(clip))

    @classmethod
    def from_config(cls, n_neurons: int, config: SpikeHistoryConfig) -> SpikeHistoryModel:
        """A fresh model with ``config.history`` and ``config.clip``."""
        return cls(n_neurons, config.history, config.clip)

    @property
    def n_neurons(self) -> int:
        return self.h.shape[0]

    @property
    def history(self) -> int:
        return self.h.shape[1]

    def _mask(self, mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
        """Validated ``[B, T]`` 0/1 mask in the parameters' dtype (all ones when ``None``)."""
        if mask is None:
            return torch.ones(B, T, dtype=self.h.dtype, device=self.h.device)
        if mask.shape != (B, T):
            raise ValueError(f"mask must have shape [B, T] = {[B, T]}, got {list(mask.shape)}")
        mask = mask.to(self.h.device, self.h.dtype)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1")
        return mask

    def _check_rates(self, rates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``rates [B, N, T]`` in the parameters' dtype; must be finite and > 0 on valid bins."""
        if rates.ndim != 3 or rates.shape[1] != self.n_neurons:
            raise ValueError(f"rates must have shape [B, N={self.n_neurons}, T], got {list(rates.shape)}")
        rates = rates.to(self.h.device, self.h.dtype)
        valid = mask[:, None].expand_as(rates) > 0
        bad = valid & ~(torch.isfinite(rates) & (rates > 0))
        if bool(bad.any()):
            raise ValueError("rates must be finite and > 0 on valid bins")
        return rates

    def _check_spikes(self, spikes: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """``spikes [B, N, T]`` (same shape as ``rates``) as non-negative integer counts in the parameters' dtype."""
        if spikes.shape != rates.shape:
            raise ValueError(f"spikes must have the shape of rates {list(rates.shape)}, got {list(spikes.shape)}")
        spikes = spikes.to(self.h.device, self.h.dtype)
        if not bool((torch.isfinite(spikes) & (spikes >= 0) & (spikes == spikes.round())).all()):
            raise ValueError("spikes must be non-negative integer counts")
        return spikes

    def _validate(
        self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if rates.ndim != 3:
            raise ValueError(f"rates must have shape [B, N, T], got {list(rates.shape)}")
        mask = self._mask(mask, rates.shape[0], rates.shape[2])
        rates = self._check_rates(rates, mask)
        return self._check_spikes(spikes, rates), rates, mask

    def _log_intensity_input(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pre-softplus drive ``[B, N, T]`` from validated tensors (padded bins: arbitrary but finite)."""
        K = self.history
        past = (spikes * mask[:, None]).clamp(max=float(self.clip))
        kernel = self.h.flip(-1)[:, None, :]  # conv weight j multiplies lag K - j
        drive = F.conv1d(F.pad(past, (K, 0)), kernel, groups=self.n_neurons)[..., :-1]
        log_rates = torch.where(mask[:, None] > 0, rates, torch.ones_like(rates)).log()
        return drive + self.w[:, None] * log_rates + self.b[:, None]

    def intensity(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Conditional intensity ``lambda [B, N, T]`` given ``spikes`` and ``rates`` ``[B, N, T]``; 0 on padding."""
        spikes, rates, mask = self._validate(spikes, rates, mask)
        return F.softplus(self._log_intensity_input(spikes, rates, mask)) * mask[:, None]

    def _nll(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lam = F.softplus(self._log_intensity_input(spikes, rates, mask))
        per_bin = lam - spikes * lam.clamp_min(torch.finfo(lam.dtype).tiny).log()
        valid = mask[:, None].expand_as(per_bin)
        return (per_bin * valid).sum() / valid.sum().clamp_min(1)

    @torch.no_grad()
    def nll(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Poisson NLL ``lambda - s log lambda`` (no ``log s!``), mean over valid bins; a detached scalar."""
        return self._nll(*self._validate(spikes, rates, mask))

    def fit(
        self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None,
        config: SpikeHistoryConfig | None = None,
    ) -> list[float]:
        """Fit ``h, w, b`` in place by full-batch LBFGS on ``nll + l2 * ||h||^2``.

        ``spikes`` and ``rates`` are ``[B, N, T]``, ``mask`` ``[B, T]``. Runs up to ``config.max_iter``
        iterations (stopping once the objective no longer changes) and returns the objective before the
        first iteration and after each one.
        """
        config = config or SpikeHistoryConfig(history=self.history, clip=int(self.clip))
        if (config.history, config.clip) != (self.history, int(self.clip)):
            raise ValueError(
                f"config has history={config.history}, clip={config.clip} but the model was built with "
                f"history={self.history}, clip={int(self.clip)}"
            )
        if config.l2 < 0 or config.max_iter < 1:
            raise ValueError(f"config needs l2 >= 0 and max_iter >= 1, got l2={config.l2}, max_iter={config.max_iter}")
        spikes, rates, mask = self._validate(spikes, rates, mask)
        optimizer = torch.optim.LBFGS(self.parameters(), max_iter=1, line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            return self._nll(spikes, rates, mask) + config.l2 * self.h.square().sum()

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        losses: list[float] = []
        for _ in range(config.max_iter):
            losses.append(float(optimizer.step(closure).detach()))
            if len(losses) > 1 and abs(losses[-1] - losses[-2]) <= 1e-9 * max(1.0, abs(losses[-1])):
                break
        with torch.no_grad():
            losses.append(float(objective()))
        return losses

    @torch.no_grad()
    def sample(
        self, rates: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Autoregressive Poisson counts ``[B, N, T]`` driven by ``rates [B, N, T]`` from zero history.

        Counts are drawn with ``generator`` and clipped at ``clip``; padded bins are 0.
        """
        if rates.ndim != 3:
            raise ValueError(f"rates must have shape [B, N, T], got {list(rates.shape)}")
        mask = self._mask(mask, rates.shape[0], rates.shape[2])
        rates = self._check_rates(rates, mask)
        clip = float(self.clip)
        log_rates = torch.where(mask[:, None] > 0, rates, torch.ones_like(rates)).log()
        drive = self.w[:, None] * log_rates + self.b[:, None]
        past = rates.new_zeros(rates.shape[0], self.n_neurons, self.history)  # lag 1 first
        spikes = torch.zeros_like(rates)
        for t in range(rates.shape[2]):
            lam = F.softplus((past * self.h).sum(-1) + drive[..., t])
            counts = torch.poisson(lam, generator=generator).clamp(max=clip) * mask[:, t, None]
            spikes[..., t] = counts
            past = torch.cat([counts[..., None], past[..., :-1]], dim=-1)
        return spikes
