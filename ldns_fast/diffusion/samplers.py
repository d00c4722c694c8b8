"""Reverse-process samplers sharing one :class:`DiffusionSchedule`, and the sampling loop.

Every sampler walks a descending subset ``timesteps`` of ``0 .. T-1`` (chosen by :meth:`set_timesteps`);
the step from ``t`` lands on the next entry ``s`` of that array, or on the clean end ``s = -1``
(``abar = 1``) after the last one. All share the generalised DDIM update (Song et al. 2021)::

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
    sigma^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)

- :class:`DDIMSampler`: ``eta`` in ``[0, 1]``; ``eta = 0`` is deterministic.
- :class:`DDPMSampler`: ``eta = 1``. Then ``sigma^2`` is the variance of the posterior
  ``q(x_s | x_t, x0)`` and the mean equals the posterior mean, so this is ancestral DDPM sampling
  (for all ``T`` steps, the reference sampler with ``beta_tilde_t``) between any two chosen timesteps.
- :class:`DPMSolverPPSampler`: DPM-Solver++(2M) (Lu et al. 2022), deterministic; it is the ``eta = 0``
  update with ``x0_hat`` replaced by its linear extrapolation in ``lambda = log(sqrt(abar / (1 - abar)))``.
- :class:`SDEDPMSolverPPSampler`: its SDE variant, the same extrapolation in the ``eta = 1`` update.
"""
from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ldns_fast.validation import is_integer

from .schedule import DiffusionSchedule

SPACINGS = ("trailing", "leading", "linspace", "logsnr")
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(
    denoiser: Callable[..., torch.Tensor], mask: torch.Tensor, conditions: torch.Tensor | None = None,
    behavior: torch.Tensor | None = None, scale: float = 1.0, **extra: object,
) -> ModelFn:
    """``model_fn(x [B, C, L], t [B])`` of a conditional denoiser ``denoiser(x, t, mask, conditions, behavior,
    **extra)``, with classifier-free guidance ``uncond + scale (cond - uncond)`` when conditions are given
    and ``scale != 1`` (0: unconditional)."""
    if conditions is None and behavior is None:
        return lambda x, t: denoiser(x, t, mask, **extra)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional = denoiser(x, t, mask, conditions, behavior, **extra)
        if scale == 1.0:
            return conditional
        unconditional = denoiser(x, t, mask, **extra)
        return unconditional + scale * (conditional - unconditional)

    return model_fn


def make_timesteps(schedule: DiffusionSchedule, num_inference_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending LongTensor ``[num_inference_steps]`` of distinct timesteps in ``[0, T-1]`` of ``schedule``.

    - ``"trailing"``: ``round(T - k T / n) - 1`` for ``k = 0 .. n-1`` (starts at ``T - 1``);
    - ``"leading"``: ``k * (T // n)`` reversed (ends at 0);
    - ``"linspace"``: ``round(linspace(0, T - 1, n))`` reversed;
    - ``"logsnr"``: evenly spaced in ``lambda = log(sqrt(abar / (1 - abar)))`` from ``lambda_{T-1}`` to
      ``lambda_0`` (the spacing recommended for DPM-Solver, Lu et al. 2022), each the nearest timestep,
      then raised where needed to keep them distinct (at low noise several targets share a timestep).
    """
    T, n = schedule.num_train_timesteps, num_inference_steps
    if not is_integer(n) or not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be an int in [1, {T}] (num_train_timesteps), got {n!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    k = torch.arange(n, dtype=torch.float64)
    if spacing == "trailing":
        # k * T is exact, so k * T / n is the correctly rounded quotient and exact halves round to even.
        steps = torch.round(T - k * T / n) - 1
    elif spacing == "leading":
        steps = (k * (T // n)).flip(0)
    elif spacing == "linspace":
        steps = torch.round(torch.linspace(0, T - 1, n, dtype=torch.float64)).flip(0)
    else:
        lam = torch.tensor([_log_snr(schedule.alpha_bar(t)) for t in range(T)], dtype=torch.float64)  # decreasing
        targets = torch.linspace(float(lam[-1]), float(lam[0]), n, dtype=torch.float64)
        nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).to(torch.float64)
        # Entry k may be at most T-1-k; lifting each to above its successor keeps that bound and makes
        # them distinct: steps[k] = max_{j >= k} (nearest[j] + j) - k.
        capped = torch.minimum(nearest, T - 1 - k) + k
        steps = capped.flip(0).cummax(0).values.flip(0) - k
    return steps.long()


def posterior_variance(abar_t: float, abar_s: float) -> float:
    """Variance of ``q(x_s | x_t, x0)`` for ``s < t``: ``(1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)``."""
    return (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    abar_t: float,
    abar_s: float,
    eta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generalised DDIM step ``x_t -> x_s`` from the predictions ``x0, eps [B, C, L]`` (module docstring)."""
    var = eta**2 * posterior_variance(abar_t, abar_s)
    x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - var, 0.0)) * eps
    if var > 0:
        x = x + math.sqrt(var) * draw_noise(x.shape, generator, x.device, x.dtype)
    return x


def draw_noise(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise, drawn on the generator's device (a seed gives one draw) and moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def _timestep_value(t: int | torch.Tensor) -> int:
    """An int or one-element integer tensor -> int."""
    if isinstance(t, bool) or (isinstance(t, torch.Tensor) and t.dtype == torch.bool):
        raise ValueError(f"timestep must be an integer, got {t!r}")
    try:
        return operator.index(t)
    except TypeError:
        raise ValueError(f"timestep must be an int or a one-element integer tensor, got {t!r}") from None


class Sampler(ABC):
    """Base sampler: the schedule, the spacing rule and the current descending ``timesteps`` (LongTensor).

    Timesteps start as all ``T`` training steps; call :meth:`set_timesteps` to use fewer, spaced by
    ``spacing`` (one of :data:`SPACINGS`, see :func:`make_timesteps`).
    """

    def __init__(self, schedule: DiffusionSchedule, spacing: str = "trailing") -> None:
        if not isinstance(schedule, DiffusionSchedule):
            raise TypeError(f"schedule must be a DiffusionSchedule, got {type(schedule).__name__}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        self.schedule = schedule
        self.spacing = spacing
        self.set_timesteps(schedule.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose ``num_inference_steps`` (in ``1..T``) timesteps with this sampler's spacing."""
        self.timesteps = make_timesteps(self.schedule, num_inference_steps, self.spacing)
        self.num_inference_steps = num_inference_steps
        self._order: list[int] = self.timesteps.tolist()
        self._position = {t: i for i, t in enumerate(self._order)}
        self.reset()

    def reset(self) -> None:
        """Forget the state of a previous run (multistep history); the timesteps are kept."""

    def index(self, t: int | torch.Tensor) -> int:
        """Position of ``t`` in ``timesteps``."""
        t = _timestep_value(t)
        if t not in self._position:
            raise ValueError(
                f"timestep {t} is not one of the {self.num_inference_steps} timesteps chosen by set_timesteps"
            )
        return self._position[t]

    def prev_timestep(self, t: int | torch.Tensor) -> int:
        """Where a step from ``t`` lands: the next entry of ``timesteps``, ``-1`` (``abar = 1``) after the last."""
        i = self.index(t) + 1
        return self._order[i] if i < len(self._order) else -1

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step: network output and ``sample`` at ``t`` (``[B, C, L]``) -> less noisy ``[B, C, L]``."""


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) with noise scale ``eta`` in ``[0, 1]``; no clipping of ``x0_hat``."""

    def __init__(self, schedule: DiffusionSchedule, eta: float = 0.0, spacing: str = "trailing") -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        super().__init__(schedule, spacing)
        self.eta = float(eta)

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t, s = _timestep_value(t), self.prev_timestep(t)
        x0, eps = self.schedule.predict_x0_eps(model_output, sample, t)
        return ddim_update(x0, eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(s), self.eta, generator)


class DDPMSampler(DDIMSampler):
    """Ancestral DDPM sampling (posterior ``q(x_s | x_t, x0_hat)`` between consecutive chosen timesteps).

    With all ``T`` steps this is the LDNS reference sampler (variance ``beta_tilde_t``, no clipping).
    """

    def __init__(self, schedule: DiffusionSchedule, spacing: str = "trailing") -> None:
        super().__init__(schedule, eta=1.0, spacing=spacing)


class DPMSolverPPSampler(Sampler):
    """DPM-Solver++(2M): second-order multistep solver in data (``x0``) prediction.

    ``eta = 0`` (default) solves the probability-flow ODE (deterministic). ``eta = 1`` is the SDE variant
    (SDE-DPM-Solver++(2M), Lu et al. 2022): the same extrapolated ``x0_hat`` in the ancestral (DDPM
    posterior) update, whose injected noise corrects model errors the way 1000-step DDPM does.
    The first step has no history and the last one lands on ``abar = 1`` (``lambda = inf``, where the
    second-order term is undefined), so both are first order (identical to DDIM with the same ``eta``).
    Steps must be taken in order; a step whose predecessor was not the previous timestep is first order.
    Timesteps default to ``"logsnr"`` spacing, the solver's natural variable: at 20 steps on the Lorenz
    run it brings both variants closer to DDPM-1000 than ``"trailing"`` (``benchmarks/results/``).
    """

    def __init__(self, schedule: DiffusionSchedule, eta: float = 0.0, spacing: str = "logsnr") -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        super().__init__(schedule, spacing)
        self.eta = float(eta)

    def reset(self) -> None:
        self._history: tuple[int, torch.Tensor] | None = None  # (timestep, x0_hat) of the last step

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t, i, s = _timestep_value(t), self.index(t), self.prev_timestep(t)
        abar_t, abar_s = self.schedule.alpha_bar(t), self.schedule.alpha_bar(s)
        x0, eps = self.schedule.predict_x0_eps(model_output, sample, t)
        previous, self._history = self._history, (t, x0)
        if s >= 0 and i > 0 and previous is not None and previous[0] == self._order[i - 1]:
            lam_prev, lam_t, lam_s = (_log_snr(self.schedule.alpha_bar(u)) for u in (previous[0], t, s))
            r = (lam_t - lam_prev) / (lam_s - lam_t)
            x0 = x0 + (x0 - previous[1]) / (2 * r)
            eps = (sample - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
        return ddim_update(x0, eps, abar_t, abar_s, self.eta, generator)


class SDEDPMSolverPPSampler(DPMSolverPPSampler):
    """SDE-DPM-Solver++(2M): :class:`DPMSolverPPSampler` with ``eta = 1`` (stochastic)."""

    def __init__(self, schedule: DiffusionSchedule, spacing: str = "logsnr") -> None:
        super().__init__(schedule, eta=1.0, spacing=spacing)


def _log_snr(abar: float) -> float:
    """``lambda = log(sqrt(abar / (1 - abar)))`` for ``0 < abar < 1``."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm++": DPMSolverPPSampler, "sde-dpm++": SDEDPMSolverPPSampler,
}


def make_sampler(name: str, schedule: DiffusionSchedule, **kwargs) -> Sampler:
    """Sampler by name (``"ddpm"``, ``"ddim"``, ``"dpm++"``, ``"sde-dpm++"``; case-insensitive); ``kwargs`` go
    to its constructor."""
    key = name.lower() if isinstance(name, str) else name
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[key](schedule, **kwargs)


def sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    sampler: Sampler,
    num_steps: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    initial_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``x ~ N(0, I)`` (or ``initial_noise``) to samples ``[B, C, L] = shape``.

    ``model_fn(x [B, C, L], t [B] long) -> model_output [B, C, L]`` is called once per step under
    ``torch.no_grad()``. All noise (initial and per step) comes from ``generator``, so a seeded
    generator reproduces the samples.
    """
    shape = tuple(shape)
    device = torch.device(device)
    if len(shape) < 1:
        raise ValueError(f"shape must be [B, ...] with at least one dimension, got {shape}")
    if initial_noise is None:
        x = draw_noise(shape, generator, device, dtype)
    elif not isinstance(initial_noise, torch.Tensor) or tuple(initial_noise.shape) != shape:
        got = getattr(initial_noise, "shape", type(initial_noise))
        raise ValueError(f"initial_noise must be a tensor of shape {shape}, got {got}")
    else:
        x = initial_noise.to(device=device, dtype=dtype)
    sampler.set_timesteps(num_steps)
    with torch.no_grad():
        for t in tqdm(sampler.timesteps.tolist(), desc=type(sampler).__name__, disable=not progress):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            x = sampler.step(model_fn(x, t_batch), t, x, generator=generator)
    return x
