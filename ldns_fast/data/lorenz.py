"""Synthetic Lorenz spiking data, the embedded default dataset.

Generation (all numpy; float64 dynamics):

1. Initial states: the attractor's centre ``(0, 0, rho - 1)`` plus Gaussian noise of std
   ``init_spread`` per axis, one per trial.
2. RK4 integration of the Lorenz system (sigma 10, rho 28, beta 8/3), vectorised over trials, with
   step ``dt = 0.005``; the first ``burn_in_steps = 500`` steps (2.5 time units, ample to reach the
   attractor) are dropped, then one state is kept every ``steps_per_bin = 2`` steps. One bin is
   therefore 0.01 Lorenz time units and a 256-bin trial spans 2.56 units: about 3.5 loops around the
   wings on average (a loop takes ~0.73 units, ~73 bins), so trajectories are smooth butterflies at
   the bin scale.
3. Each of the 3 dimensions is z-scored with its mean and std over all trials and bins.
4. Rates ``r = softplus_2(z @ C + log 0.3)`` with ``softplus_2(x) = log(1 + exp(2x)) / 2`` and a
   Gaussian projection ``C [3, n_neurons]`` whose columns (one per neuron) have unit norm.
5. Spikes ``~ Poisson(r)`` per bin (:func:`poisson_counts`, uint8).

Independent random streams (from ``seed``) drive the initial states, the projection, the spikes and
the train/val/test split. The paper size (5000 x 256 x 128) takes about 3 s of CPU time (one core);
rates and spikes are produced in blocks of trials to bound temporary memory.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ldns_fast.validation import check_bin_width, is_integer, require_positive_ints, require_reals

from .hdf5 import random_split, write_dataset

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
RATE_OFFSET = float(np.log(0.3))
GENERATOR_VERSION = 1  # part of the cache key: bump whenever generation changes
CACHE_ENV = "LDNS_FAST_CACHE"
_CHUNK_ELEMENTS = 1 << 22  # rate/spike elements generated at a time (bounds temporary memory)
_SOFTPLUS_LINEAR = 20.0  # softplus_2(x) == x to float64 precision beyond this


@dataclass(frozen=True)
class LorenzConfig:
    """Size, seed and dynamics of a synthetic Lorenz dataset (defaults: the paper's 5000 x 256 x 128)."""

    n_trials: int = 5000
    n_bins: int = 256
    n_neurons: int = 128
    seed: int = 0
    dt: float = 0.005
    steps_per_bin: int = 2
    burn_in_steps: int = 500
    init_spread: float = 8.0
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    bin_width: float = 0.01
    min_bins: int | None = None  # variable lengths: each trial keeps U{min_bins..n_bins} bins

    def __post_init__(self) -> None:
        require_positive_ints(self, "n_trials", "n_bins", "n_neurons", "steps_per_bin")
        for name in ("seed", "burn_in_steps"):
            value = getattr(self, name)
            if not is_integer(value) or value < 0:
                raise ValueError(f"LorenzConfig.{name} must be an integer >= 0, got {value!r}")
        require_reals(self, 0.0, math.inf, "dt", "init_spread", open_low=True)
        check_bin_width(self.bin_width, "LorenzConfig.bin_width")
        if self.min_bins is not None and (
            not is_integer(self.min_bins)
            or not 1 <= self.min_bins <= self.n_bins
        ):
            raise ValueError(
                f"LorenzConfig.min_bins must be None or an integer in [1, n_bins], got {self.min_bins!r}"
            )
        object.__setattr__(self, "splits", tuple(float(f) for f in self.splits))
        random_split(0, self.splits)  # validates the fractions

    @classmethod
    def paper(cls, **overrides: object) -> LorenzConfig:
        """The paper's dataset: 5000 trials x 256 bins x 128 neurons."""
        return cls(**{"n_trials": 5000, "n_bins": 256, "n_neurons": 128, **overrides})

    @classmethod
    def small(cls, **overrides: object) -> LorenzConfig:
        """A quick dataset: 1000 trials x 128 bins x 64 neurons."""
        return cls(**{"n_trials": 1000, "n_bins": 128, "n_neurons": 64, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: object) -> LorenzConfig:
        """``"paper"`` or ``"small"``, with optional field overrides."""
        presets = {"paper": cls.paper, "small": cls.small}
        if name not in presets:
            raise ValueError(f"unknown Lorenz preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    def cache_key(self) -> str:
        """A short hash of every field and the generator version."""
        payload = json.dumps({**asdict(self), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        return f"lorenz_{self.n_trials}x{self.n_bins}x{self.n_neurons}_seed{self.seed}_{self.cache_key()}.h5"


@dataclass
class LorenzSample:
    """A generated dataset (file layout, time before neurons).

    Attributes:
        spikes: uint8 counts ``[trials, bins, neurons]``.
        rates: float32 Poisson rates per bin ``[trials, bins, neurons]``.
        latents: float64 z-scored Lorenz states ``[trials, bins, 3]``.
        projection: float64 ``[3, neurons]``, unit-norm columns.
        split_codes: uint8 ``[trials]``, 0 train / 1 val / 2 test.
        lengths: int64 ``[trials]`` valid bins per trial (all ``n_bins`` unless ``min_bins`` is set;
            spikes, rates and latents are zero past each length).
    """

    spikes: np.ndarray
    rates: np.ndarray
    latents: np.ndarray
    projection: np.ndarray
    split_codes: np.ndarray
    lengths: np.ndarray


def lorenz_derivative(state: np.ndarray) -> np.ndarray:
    """Lorenz vector field for states ``[3, n]`` (rows x, y, z)."""
    x, y, z = state
    return np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z])


def rk4_step(state: np.ndarray, dt: float) -> np.ndarray:
    """One classical Runge-Kutta step of the Lorenz system for states ``[3, n]``."""
    k1 = lorenz_derivative(state)
    k2 = lorenz_derivative(state + 0.5 * dt * k1)
    k3 = lorenz_derivative(state + 0.5 * dt * k2)
    k4 = lorenz_derivative(state + dt * k3)
    return state + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def integrate_lorenz(initial: np.ndarray, config: LorenzConfig) -> np.ndarray:
    """Trajectories ``[trials, n_bins, 3]`` from initial states ``[trials, 3]``, after the burn-in."""
    state = np.ascontiguousarray(initial.T, dtype=np.float64)
    for _ in range(config.burn_in_steps):
        state = rk4_step(state, config.dt)
    out = np.empty((config.n_bins, 3, state.shape[1]))
    for b in range(config.n_bins):
        out[b] = state
        for _ in range(config.steps_per_bin):
            state = rk4_step(state, config.dt)
    return out.transpose(2, 0, 1).copy()


def zscore(latents: np.ndarray) -> np.ndarray:
    """Z-score the last axis with statistics over all other axes."""
    flat = latents.reshape(-1, latents.shape[-1])
    return (latents - flat.mean(axis=0)) / flat.std(axis=0)


def unit_projection(n_latent: int, n_neurons: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian matrix ``[n_latent, n_neurons]`` with unit-norm columns."""
    c = rng.standard_normal((n_latent, n_neurons))
    return c / np.linalg.norm(c, axis=0, keepdims=True)


def softplus_beta2(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``log(1 + exp(2x)) / 2`` elementwise in x's float dtype (``out`` may be ``x``); ``x`` above 20."""
    linear = x > _SOFTPLUS_LINEAR
    kept = x[linear]
    y = np.minimum(x, _SOFTPLUS_LINEAR, out=out)
    y *= 2.0
    np.exp(y, out=y)
    np.log1p(y, out=y)
    y *= 0.5
    y[linear] = kept
    return y


def poisson_counts(rates: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Poisson draws (``torch.poisson``) with means ``rates`` as uint8 counts of the same shape."""
    counts = torch.poisson(torch.from_numpy(np.ascontiguousarray(rates, dtype=np.float32)), generator=generator)
    if counts.numel() and float(counts.max()) > np.iinfo(np.uint8).max:
        raise ValueError("a Poisson count exceeds 255: rates too high for uint8 counts")
    return counts.numpy().astype(np.uint8)


def simulate_lorenz(config: LorenzConfig | None = None) -> LorenzSample:
    """Generate a Lorenz dataset (see the module docstring); deterministic in ``config``."""
    config = config or LorenzConfig()
    init_seed, projection_seed, spike_seed, split_seed = np.random.SeedSequence(config.seed).spawn(4)
    centre = np.array([0.0, 0.0, RHO - 1.0])
    noise = np.random.default_rng(init_seed).standard_normal((config.n_trials, 3))
    latents = zscore(integrate_lorenz(centre + config.init_spread * noise, config))
    projection = unit_projection(3, config.n_neurons, np.random.default_rng(projection_seed))
    shape = (config.n_trials, config.n_bins, config.n_neurons)
    rates = np.empty(shape, dtype=np.float32)
    spikes = np.empty(shape, dtype=np.uint8)
    spike_rng = torch.Generator().manual_seed(int(spike_seed.generate_state(1)[0]))
    weights = projection.astype(np.float32)
    step = max(1, _CHUNK_ELEMENTS // (config.n_bins * config.n_neurons))
    for start in range(0, config.n_trials, step):
        block = slice(start, start + step)
        drive = rates[block]
        np.matmul(latents[block].astype(np.float32), weights, out=drive)
        drive += RATE_OFFSET
        softplus_beta2(drive, out=drive)
        spikes[block] = poisson_counts(drive, spike_rng)
    split_codes = random_split(config.n_trials, config.splits, int(split_seed.generate_state(1)[0]))
    lengths = np.full(config.n_trials, config.n_bins, dtype=np.int64)
    if config.min_bins is not None:
        length_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(5)[4])
        lengths = length_rng.integers(config.min_bins, config.n_bins + 1, config.n_trials)
        padding = np.arange(config.n_bins)[None, :] >= lengths[:, None]  # [trials, bins]
        for array in (spikes, rates, latents):
            array[padding] = 0
    return LorenzSample(spikes, rates, latents, projection, split_codes, lengths)


def default_cache_dir() -> Path:
    """``$LDNS_FAST_CACHE`` if set, else ``~/.cache/ldns_fast``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ldns_fast")


def _description(config: LorenzConfig) -> str:
    config_json = json.dumps(asdict(config), sort_keys=True)
    return f"Synthetic Lorenz spiking data (ldns_fast generator v{GENERATOR_VERSION}); config: {config_json}"


def _is_cached(path: Path, config: LorenzConfig) -> bool:
    """Whether ``path`` opens as HDF5 and holds ``spikes`` of the config's shape and its description.

    Files are written atomically, so this header check suffices; :func:`read_dataset` validates content.
    """
    try:
        with h5py.File(path, "r") as f:
            shape = f["spikes"].shape
            description = f.attrs.get("description", "")
    except (OSError, KeyError):
        return False
    description = description.decode() if isinstance(description, bytes) else str(description)
    return shape == (config.n_trials, config.n_bins, config.n_neurons) and description == _description(config)


def load_lorenz(config: LorenzConfig | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached dataset file for ``config``, generating and writing it once if needed.

    The file (in ``cache_dir``, default :func:`default_cache_dir`) is named after
    :meth:`LorenzConfig.file_name` (sizes, seed and a hash of every field). An existing file that opens
    with the expected shape and description is reused; anything else there is regenerated and replaced.
    Read it with :func:`ldns_fast.data.read_dataset`.
    """
    config = config or LorenzConfig()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / config.file_name()
    if _is_cached(path, config):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    sample = simulate_lorenz(config)
    return write_dataset(
        path,
        sample.spikes,
        bin_width=config.bin_width,
        split=sample.split_codes,
        lengths=sample.lengths if config.min_bins is not None else None,
        rates=sample.rates,
        latents=sample.latents,
        description=_description(config),
    )
