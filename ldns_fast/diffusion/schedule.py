"""Variance-preserving noise schedule: betas, cumulative alphas, forward noising, prediction targets.

Forward process at integer timesteps ``t = 0 .. T-1``::

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,   abar_t = prod_{i <= t} (1 - beta_i)

The network predicts either ``eps`` (``prediction_type="epsilon"``) or the velocity
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (``prediction_type="v"``). Tables are float64; every
tensor returned takes the dtype and device of the sample it is applied to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ldns_fast.validation import is_integer

BETA_KINDS = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v")
# Cosine schedule (Nichol & Dhariwal 2021): offset s in abar(u) = cos((u + s) / (1 + s) * pi / 2)^2
# and the cap on each beta that keeps the last steps finite.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


@dataclass(frozen=True)
class NoiseSchedule:
    """Forward-process configuration; the defaults are the LDNS reference (DDPM, 1000 linear steps, epsilon).

    Args:
        num_train_timesteps: ``T``, the number of discrete noise levels.
        beta_start, beta_end: first and last beta of the ``"linear"`` schedule.
        kind: ``"linear"`` (betas evenly spaced) or ``"cosine"`` (betas ignore ``beta_start/end``).
        prediction_type: what the network outputs, ``"epsilon"`` or ``"v"``.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "linear"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        T = self.num_train_timesteps
        if not is_integer(T) or T < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {T!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                "need 0 < beta_start <= beta_end < 1, "
                f"got beta_start={self.beta_start!r}, beta_end={self.beta_end!r}"
            )
        if self.kind not in BETA_KINDS:
            raise ValueError(f"kind must be one of {BETA_KINDS}, got {self.kind!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")


def make_betas(config: NoiseSchedule) -> torch.Tensor:
    """Betas ``[T]`` (float64) for ``config.kind``."""
    T = config.num_train_timesteps
    if config.kind == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=COSINE_MAX_BETA)


class DiffusionSchedule:
    """Tables of a :class:`NoiseSchedule` and the maps between ``x0``, ``eps``, ``v`` and ``x_t``.

    Attributes (float64, CPU): ``betas [T]``, ``alphas [T]`` (``1 - betas``), ``alphas_cumprod [T]``.
    Timesteps ``t`` are an int or an integer tensor ``[]`` or ``[B]`` (one per sample), in ``[0, T-1]``.
    """

    def __init__(self, config: NoiseSchedule | None = None) -> None:
        self.config = config if config is not None else NoiseSchedule()
        self.betas = make_betas(self.config)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._alpha_bar_values: list[float] = self.alphas_cumprod.tolist()  # plain floats: no tensor reads
        # [2, T] tables (sqrt(abar), sqrt(1 - abar)) cast per (device, dtype) on first use.
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def alpha_bar(self, t: int) -> float:
        """``abar_t`` as a float64 Python float; ``t = -1`` is the clean end of the chain (``abar = 1``)."""
        if not is_integer(t) or not -1 <= t < self.num_train_timesteps:
            raise ValueError(f"t must be an int in [-1, {self.num_train_timesteps - 1}], got {t!r}")
        return 1.0 if t == -1 else self._alpha_bar_values[t]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; ``x0, noise [B, C, L]`` -> ``[B, C, L]``."""
        _check_same_shape(x0, noise, "x0", "noise")
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Training target ``[B, C, L]``: ``noise``, or ``v = sqrt(abar) noise - sqrt(1 - abar) x0``."""
        _check_same_shape(x0, noise, "x0", "noise")
        if self.prediction_type == "epsilon":
            return noise
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def predict_x0_eps(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output and noisy ``sample`` (both ``[B, C, L]``) at ``t`` -> ``(x0_hat, eps_hat)``."""
        _check_same_shape(model_output, sample, "model_output", "sample")
        a, s = self._coefficients(t, sample)
        if self.prediction_type == "epsilon":
            return (sample - s * model_output) / a, model_output
        return a * sample - s * model_output, s * sample + a * model_output

    def _coefficients(self, t: int | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` in ``x``'s dtype/device, shaped ``[B, 1, ...]`` to broadcast."""
        t = self._check_timesteps(t, x)
        key = (x.device, x.dtype)
        if key not in self._tables:
            table = torch.stack([self.alphas_cumprod.sqrt(), (1 - self.alphas_cumprod).sqrt()])
            self._tables[key] = table.to(device=x.device, dtype=x.dtype)
        coef = self._tables[key][:, t.to(x.device)]
        coef = coef.reshape(2, *t.shape, *([1] * (x.dim() - t.dim())))
        return coef[0], coef[1]

    def _check_timesteps(self, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Validate ``t`` (int, integer ``[]`` or ``[B]`` tensor in ``[0, T-1]``) against ``x [B, ...]``."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"samples must be tensors of shape [B, ...], got {getattr(x, 'shape', type(x))}")
        if is_integer(t):
            t = torch.tensor(t)
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(f"t must be an int or an integer tensor, got {t!r}")
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must have shape [] or [B] = [{x.shape[0]}], got {tuple(t.shape)}")
        T = self.num_train_timesteps
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
            raise ValueError(f"t must lie in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
        return t


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must be tensors of the same shape, got "
            f"{getattr(a, 'shape', type(a))} and {getattr(b, 'shape', type(b))}"
        )
