"""Synthetic reach-like dataset: a direction per trial drives latent dynamics, spikes and hand velocity.

Per trial: direction ``theta ~ U[0, 2 pi)``; a bell-shaped speed profile ``s(t)`` peaking at a jittered
movement time; hand velocity ``v(t) = g s(t) [cos theta, sin theta]`` (``g`` a per-trial gain around 1)
and hand position (cumulative velocity). Latents ``z = [v_x, v_y, x, y, s]`` are z-scored over the
dataset; rates ``softplus_2(z @ C + log base_rate)`` with unit-norm columns of ``C [5, neurons]``; spikes
Poisson. Written in the dataset format with ``conditions = [cos theta, sin theta]`` and
``behavior = v`` (``[trials, time, 2]``), for conditional-generation tests and examples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldns_fast.validation import require_positive_ints

from .hdf5 import random_split, write_dataset
from .lorenz import poisson_counts, softplus_beta2, unit_projection, zscore


@dataclass(frozen=True)
class ReachConfig:
    """Size and seed of a synthetic reach dataset (bin width 10 ms)."""

    n_trials: int = 1000
    n_bins: int = 100
    n_neurons: int = 64
    seed: int = 0
    base_rate: float = 0.2
    bin_width: float = 0.01
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def __post_init__(self) -> None:
        require_positive_ints(self, "n_trials", "n_bins", "n_neurons")
        if not self.base_rate > 0:
            raise ValueError(f"ReachConfig.base_rate must be positive, got {self.base_rate}")


@dataclass
class ReachSample:
    """Generated arrays in file layout: spikes/rates ``[n, T, N]``, latents ``[n, T, 5]``,
    behavior ``[n, T, 2]``, directions ``[n]`` (radians), conditions ``[n, 2]``, split codes ``[n]``."""

    spikes: np.ndarray
    rates: np.ndarray
    latents: np.ndarray
    behavior: np.ndarray
    directions: np.ndarray
    conditions: np.ndarray
    split_codes: np.ndarray


def simulate_reach(config: ReachConfig | None = None) -> ReachSample:
    """Generate a reach dataset (module docstring); deterministic in ``config``."""
    config = config or ReachConfig()
    trial_seed, projection_seed, spike_seed, split_seed = np.random.SeedSequence(config.seed).spawn(4)
    rng = np.random.default_rng(trial_seed)
    n, T = config.n_trials, config.n_bins
    theta = rng.uniform(0, 2 * np.pi, n)
    onset = T * (0.5 + 0.05 * rng.standard_normal(n))
    gain = 1 + 0.1 * rng.standard_normal(n)
    t = np.arange(T)[None, :]
    speed = np.exp(-0.5 * ((t - onset[:, None]) / (0.12 * T)) ** 2)  # [n, T]
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # [n, 2]
    velocity = (gain[:, None] * speed)[..., None] * direction[:, None, :]  # [n, T, 2]
    position = np.cumsum(velocity, axis=1)
    latents = zscore(np.concatenate([velocity, position, speed[..., None]], axis=-1))
    projection = unit_projection(latents.shape[-1], config.n_neurons, np.random.default_rng(projection_seed))
    rates = (latents @ projection + np.log(config.base_rate)).astype(np.float32)
    softplus_beta2(rates, out=rates)
    generator = torch.Generator().manual_seed(int(spike_seed.generate_state(1)[0]))
    spikes = poisson_counts(rates, generator)
    split = random_split(n, config.splits, int(split_seed.generate_state(1)[0]))
    return ReachSample(spikes, rates, latents, velocity.astype(np.float32), theta, direction, split)


def write_reach(path: str | os.PathLike, config: ReachConfig | None = None) -> Path:
    """Simulate and write a reach dataset file (conditions = [cos, sin] of the direction, behavior = velocity)."""
    config = config or ReachConfig()
    sample = simulate_reach(config)
    return write_dataset(
        path, sample.spikes, bin_width=config.bin_width, conditions=sample.conditions, behavior=sample.behavior,
        rates=sample.rates, latents=sample.latents, split=sample.split_codes,
        description=f"synthetic reach data (ldns_fast): {config}",
    )
