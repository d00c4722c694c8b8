"""Spike-history observation model fitted on top of the autoencoder's rates.

Per neuron ``i`` with self-history length ``K``::

    lambda[i, t] = softplus(sum_{k=1..K} h[i, k] * s[i, t-k]
                            + sum_{j != i} sum_{k=1..K_c} W[k, i, j] * s[j, t-k]
                            + w[i] * log r[i, t] + b[i])

where ``r`` are per-bin rates ``[B, N, T]`` (from the autoencoder), ``s`` spike counts ``[B, N, T]``
clipped at ``clip`` in the history, and the history is zero before the first bin. Padded bins
(``mask == 0``) contribute nothing: they are left out of the loss, their intensity and sampled
counts are zero and their counts never enter the history.

The coupling between neurons is optional and low-rank: ``W[k] = U diag(g[:, k]) V``, where ``V [R, N]``
projects the population's recent counts onto ``R = coupling_rank`` factors, ``g [R, K_c]`` filters each
factor over lags ``1..K_c`` and ``U [N, R]`` feeds the factors back to every neuron. Its diagonal is left
out, so a neuron's own history acts through ``h`` alone. With ``R = 0`` there is no coupling term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.validation import is_integer

_COUPLING = ("coupling_u", "coupling_g", "coupling_v")
_LINE_SEARCH_EVALS = 25  # most objective evaluations per LBFGS iteration (its line search included)


@dataclass
class SpikeHistoryConfig:
    """History length ``K``, history count clip, L2 penalty on ``h`` and LBFGS iterations.

    ``coupling_rank`` ``R`` (0: none) and ``coupling_history`` ``K_c`` (lags) shape the low-rank coupling
    between neurons; ``coupling_l2`` penalises its factors ``U, g, V``. ``enabled``: whether a training run
    fits the model after the autoencoder (``RunConfig.spike_history``; the train CLI's ``--spike-history``
    sets it); the model itself ignores it.
    """

    history: int = 20
    clip: int = 5
    l2: float = 1e-4
    max_iter: int = 200
    coupling_rank: int = 0
    coupling_history: int = 5
    coupling_l2: float = 1e-4
    enabled: bool = False


def _causal_filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``out[b, c, t] = sum_{k=1..L} kernel[c, k-1] * x[b, c, t-k]`` for ``x [B, C, T]``, ``kernel [C, L]``."""
    L = kernel.shape[1]
    weight = kernel.flip(-1)[:, None, :]  # conv weight j multiplies lag L - j
    return F.conv1d(F.pad(x, (L, 0)), weight, groups=kernel.shape[0])[..., :-1]


def _log_rates(rates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log rates [B, N, T]`` with 0 on padded bins (``mask [B, T] == 0``), where rates may be 0."""
    return torch.where(mask[:, None] > 0, rates, torch.ones_like(rates)).log()


class SpikeHistoryModel(nn.Module):
    """Per-neuron history filters ``h [N, K]``, rate gains ``w [N]`` (init 1) and offsets ``b [N]`` (init 0).

    With ``coupling_rank = R > 0`` it also holds the coupling factors ``coupling_u [N, R]`` (init 0, so a
    fresh model has no coupling), ``coupling_g [R, K_c]`` (init 1) and ``coupling_v [R, N]`` (init small,
    random from a fixed seed). ``clip`` is a buffer, so a saved ``state_dict`` restores it together with the
    parameters; with ``R = 0`` the ``state_dict`` holds just ``h, w, b, clip``.
    """

    def __init__(
        self, n_neurons: int, history: int = 20, clip: int = 5, coupling_rank: int = 0, coupling_history: int = 5
    ) -> None:
        super().__init__()
        for name, value in (
            ("n_neurons", n_neurons), ("history", history), ("clip", clip), ("coupling_history", coupling_history)
        ):
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_integer(coupling_rank) or not 0 <= coupling_rank <= n_neurons:
            raise ValueError(f"coupling_rank must be an integer in [0, n_neurons={n_neurons}], got {coupling_rank!r}")
        self.h = nn.Parameter(torch.zeros(n_neurons, history))
        self.w = nn.Parameter(torch.ones(n_neurons))
        self.b = nn.Parameter(torch.zeros(n_neurons))
        self.register_buffer("clip", torch.tensor(clip))
        if coupling_rank:
            gen = torch.Generator().manual_seed(0)
            v = torch.randn(coupling_rank, n_neurons, generator=gen) / math.sqrt(n_neurons)
            self.coupling_u = nn.Parameter(torch.zeros(n_neurons, coupling_rank))
            self.coupling_g = nn.Parameter(torch.ones(coupling_rank, coupling_history))
            self.coupling_v = nn.Parameter(v)
        else:
            for name in _COUPLING:
                self.register_parameter(name, None)

    @classmethod
    def from_config(cls, n_neurons: int, config: SpikeHistoryConfig) -> SpikeHistoryModel:
        """A fresh model with ``config``'s history, clip and coupling shape."""
        return cls(n_neurons, config.history, config.clip, config.coupling_rank, config.coupling_history)

    @property
    def n_neurons(self) -> int:
        return self.h.shape[0]

    @property
    def history(self) -> int:
        return self.h.shape[1]

    @property
    def coupling_rank(self) -> int:
        return 0 if self.coupling_u is None else self.coupling_u.shape[1]

    @property
    def coupling_history(self) -> int:
        """Coupling lags ``K_c`` (0 without coupling)."""
        return 0 if self.coupling_g is None else self.coupling_g.shape[1]

    def _self_filter(self) -> torch.Tensor:
        """Filter ``[N, max(K, K_c)]`` (lag 1 first) on a neuron's own history: ``h`` less the coupling's diagonal."""
        if not self.coupling_rank:
            return self.h
        diag = torch.einsum("ir,rk,ri->ik", self.coupling_u, self.coupling_g, self.coupling_v)
        L = max(self.history, self.coupling_history)
        return F.pad(self.h, (0, L - self.history)) - F.pad(diag, (0, L - self.coupling_history))

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

    def _prepare(
        self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validated ``spikes``, their clipped history ``past`` (0 on padding), ``log_rates`` (0 on padding),
        all ``[B, N, T]``, and ``mask [B, T]``: what the drive needs, computed once per fit."""
        if rates.ndim != 3:
            raise ValueError(f"rates must have shape [B, N, T], got {list(rates.shape)}")
        mask = self._mask(mask, rates.shape[0], rates.shape[2])
        rates = self._check_rates(rates, mask)
        spikes = self._check_spikes(spikes, rates)
        past = (spikes * mask[:, None]).clamp(max=float(self.clip))
        return spikes, past, _log_rates(rates, mask), mask

    def _log_intensity_input(self, past: torch.Tensor, log_rates: torch.Tensor) -> torch.Tensor:
        """Pre-softplus drive ``[B, N, T]`` from prepared ``past`` and ``log_rates`` (padded bins: arbitrary)."""
        drive = _causal_filter(past, self._self_filter())
        if self.coupling_rank:
            # einsum contracts as one matrix product; `V @ past` would run B small batched ones
            factors = _causal_filter(torch.einsum("rn,bnt->brt", self.coupling_v, past), self.coupling_g)
            drive = drive + torch.einsum("nr,brt->bnt", self.coupling_u, factors)
        return drive + self.w[:, None] * log_rates + self.b[:, None]

    def intensity(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Conditional intensity ``lambda [B, N, T]`` given ``spikes`` and ``rates`` ``[B, N, T]``; 0 on padding."""
        _, past, log_rates, mask = self._prepare(spikes, rates, mask)
        return F.softplus(self._log_intensity_input(past, log_rates)) * mask[:, None]

    def _nll(
        self, spikes: torch.Tensor, past: torch.Tensor, log_rates: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        lam = F.softplus(self._log_intensity_input(past, log_rates))
        per_bin = lam - spikes * lam.clamp_min(torch.finfo(lam.dtype).tiny).log()
        valid = mask[:, None].expand_as(per_bin)
        return (per_bin * valid).sum() / valid.sum().clamp_min(1)

    @torch.no_grad()
    def nll(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Poisson NLL ``lambda - s log lambda`` (no ``log s!``), mean over valid bins; a detached scalar."""
        return self._nll(*self._prepare(spikes, rates, mask))

    def _check_config(self, config: SpikeHistoryConfig) -> None:
        """``config`` must describe this model's shape and hold valid optimiser settings."""
        built = (self.history, int(self.clip), self.coupling_rank, self.coupling_history)
        lags = config.coupling_history if config.coupling_rank else 0
        asked = (config.history, config.clip, config.coupling_rank, lags)
        if asked != built:
            names = "history, clip, coupling_rank, coupling_history"
            raise ValueError(f"config has ({names}) = {asked} but the model was built with {built}")
        if config.l2 < 0 or config.coupling_l2 < 0 or config.max_iter < 1:
            raise ValueError(
                f"config needs l2 >= 0, coupling_l2 >= 0 and max_iter >= 1, got l2={config.l2}, "
                f"coupling_l2={config.coupling_l2}, max_iter={config.max_iter}"
            )

    def _objective(self, inputs: tuple[torch.Tensor, ...], config: SpikeHistoryConfig) -> torch.Tensor:
        """The fit's objective on ``_prepare``'d ``inputs``: NLL plus the L2 penalties of ``config``."""
        loss = self._nll(*inputs) + config.l2 * self.h.square().sum()
        for name, p in self.named_parameters():
            if name in _COUPLING:
                loss = loss + config.coupling_l2 * p.square().sum()
        return loss

    def fit(
        self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor | None = None,
        config: SpikeHistoryConfig | None = None,
    ) -> list[float]:
        """Fit all parameters in place by full-batch LBFGS on the penalised NLL.

        The objective is ``nll + l2 * ||h||^2 + coupling_l2 * (||U||^2 + ||g||^2 + ||V||^2)``.
        ``spikes`` and ``rates`` are ``[B, N, T]``, ``mask`` ``[B, T]``. Runs up to ``config.max_iter``
        iterations (stopping once the objective no longer changes) and returns the objective before the
        first iteration and after each one.
        """
        if config is None:
            coupling = {"coupling_history": self.coupling_history} if self.coupling_rank else {}
            config = SpikeHistoryConfig(self.history, int(self.clip), coupling_rank=self.coupling_rank, **coupling)
        self._check_config(config)
        inputs = self._prepare(spikes, rates, mask)
        # max_eval bounds the line search; LBFGS's default (5/4 of max_iter = 1) leaves it no trial step, so
        # the first rejected unit step would end the fit for good.
        optimizer = torch.optim.LBFGS(self.parameters(), max_iter=1, max_eval=_LINE_SEARCH_EVALS,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self._objective(inputs, config)
            loss.backward()
            return loss

        losses: list[float] = []
        for _ in range(config.max_iter):
            losses.append(float(optimizer.step(closure).detach()))
            if len(losses) > 1 and abs(losses[-1] - losses[-2]) <= 1e-9 * max(1.0, abs(losses[-1])):
                break
        with torch.no_grad():
            losses.append(float(self._objective(inputs, config)))
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
        drive = self.w[:, None] * _log_rates(rates, mask) + self.b[:, None]
        h = self._self_filter()
        past = rates.new_zeros(rates.shape[0], self.n_neurons, h.shape[1])  # lag 1 first
        if self.coupling_rank:
            u_t, v_t, g = self.coupling_u.t(), self.coupling_v.t(), self.coupling_g
            factors = rates.new_zeros(rates.shape[0], self.coupling_rank, self.coupling_history)  # V s, lag 1 first
        spikes = torch.zeros_like(rates)
        for t in range(rates.shape[2]):
            eta = (past * h).sum(-1) + drive[..., t]
            if self.coupling_rank:
                eta = eta + (factors * g).sum(-1) @ u_t
            lam = F.softplus(eta)
            counts = torch.poisson(lam, generator=generator).clamp(max=clip) * mask[:, t, None]
            spikes[..., t] = counts
            past = torch.cat([counts[..., None], past[..., :-1]], dim=-1)
            if self.coupling_rank:
                factors = torch.cat([(counts @ v_t)[..., None], factors[..., :-1]], dim=-1)
        return spikes
