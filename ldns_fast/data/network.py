"""Spiking-network reach dataset: a recurrent E/I network of leaky integrate-and-fire neurons.

Independent validation data that does not follow the models' assumptions (no latent-to-rate map, no
Poisson counts). Per trial: a direction ``theta ~ U[0, 2 pi)``, a bell-shaped speed profile ``s(t)``
peaking at a jittered movement time and a gain ``g`` around 1; hand velocity
``v(t) = g s(t) [cos theta, sin theta]`` at the bin centres (unitless, peak about 1).

The network (``n_excitatory + n_inhibitory`` neurons, simulated at ``dt`` for every trial at once, after
an unrecorded ``burn_in``): membrane potentials in threshold units (rest 0, threshold 1, reset 0),

    V <- V + (1 - exp(-dt / tau)) (mu_i(t) - V) + noise sqrt(1 - exp(-2 dt / tau)) xi + sum_j W_ji S_j,

with ``xi`` independent standard normals (``noise`` is the stationary std of the free potential) and
``S_j`` the spikes of the previous step (1-step delay). ``W`` is sparse (each ordered pair connected
with probability ``connection_prob``, no self-connections): an excitatory spike adds ``j_exc``, an
inhibitory one subtracts ``inhibition_ratio * j_exc`` (both times ``coupling_scale``; ``0`` switches
coupling off). A neuron reaching 1 spikes, resets to 0 and stays at 0 for ``refractory`` seconds.
The drive is

    mu_i(t) = b_i + shared_i eta(t) + g s(t + drive_lead) (m_i + d_i cos(theta - p_i)),

with baselines ``b_i ~ N(baseline, baseline_spread)``, a slow shared fluctuation ``eta`` (unit-variance
Ornstein-Uhlenbeck process per trial, time constant ``shared_tau``) with loadings
``shared_i ~ shared_noise U(0.5, 1.5)``, condition-independent movement modulation
``m_i ~ N(0, movement)``, tuning depth ``d_i ~ tuning U(0, 1)`` and preferred direction ``p_i ~ U[0, 2 pi)``.
``spikes`` are the binned counts of ``n_recorded`` randomly chosen neurons. There are no true rates.

Weights lie on a grid of ``2**-10``, so the recurrent sums are exact in float32 whatever order the BLAS
adds them in, and the data depend only on the seed.

    python -m ldns_fast.data.network OUT.h5 [--n-trials 1000] [--seed 0] [--coupling-scale 1.0]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ldns_fast.validation import require_positive_ints

from .hdf5 import random_split, write_dataset

WEIGHT_GRID = 2.0**-10
"""Recurrent weights are multiples of this (exact float32 sums, deterministic across BLAS builds)."""

_PEAK, _JITTER, _WIDTH = 0.5, 0.05, 0.12
"""Speed-profile peak time, its per-trial jitter (std) and its width (std), as fractions of the trial."""


@dataclass(frozen=True)
class NetworkReachConfig:
    """Task, network and recording of a spiking-network reach dataset (module docstring).

    Times in seconds; potentials, drives and weights in units of the threshold (rest and reset 0).
    ``bin_width``, ``refractory`` and ``burn_in`` are whole numbers of ``dt`` steps. The defaults give
    about 18 Hz over the recorded neurons, visible bin-scale pairwise correlations and directions
    decodable to a few degrees.
    """

    n_trials: int = 1000
    n_bins: int = 140
    bin_width: float = 0.005
    n_recorded: int = 96
    n_excitatory: int = 160
    n_inhibitory: int = 40
    dt: float = 0.001
    refractory: float = 0.002
    tau_membrane: float = 0.02
    burn_in: float = 0.2
    baseline: float = 0.78
    baseline_spread: float = 0.1
    noise: float = 0.25
    shared_noise: float = 0.05
    shared_tau: float = 0.1
    movement: float = 0.2
    tuning: float = 1.8
    drive_lead: float = 0.1
    connection_prob: float = 0.1
    j_exc: float = 0.07
    inhibition_ratio: float = 4.0
    coupling_scale: float = 1.0
    seed: int = 0
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def __post_init__(self) -> None:
        require_positive_ints(self, "n_trials", "n_bins", "n_recorded", "n_excitatory", "n_inhibitory")
        name = type(self).__name__
        for field in ("bin_width", "dt", "refractory", "tau_membrane", "shared_tau"):
            value = getattr(self, field)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}.{field} must be a positive number of seconds, got {value!r}")
        for field in ("burn_in", "baseline_spread", "noise", "shared_noise", "movement", "tuning", "drive_lead",
                      "j_exc", "inhibition_ratio", "coupling_scale"):
            value = getattr(self, field)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name}.{field} must be a non-negative number, got {value!r}")
        if not np.isfinite(self.baseline):
            raise ValueError(f"{name}.baseline must be finite, got {self.baseline!r}")
        if not 0 <= self.connection_prob <= 1:
            raise ValueError(f"{name}.connection_prob must lie in [0, 1], got {self.connection_prob!r}")
        if self.n_recorded > self.n_neurons:
            raise ValueError(f"{name}.n_recorded ({self.n_recorded}) exceeds the network size ({self.n_neurons})")
        for field in ("bin_width", "refractory", "burn_in"):
            steps = getattr(self, field) / self.dt
            if abs(steps - round(steps)) > 1e-6 or (field != "burn_in" and round(steps) < 1):
                raise ValueError(f"{name}.{field} ({getattr(self, field)}) must be a whole number of "
                                 f"dt = {self.dt} steps")
        if self.dt >= self.tau_membrane:
            raise ValueError(f"{name}.dt ({self.dt}) must be shorter than tau_membrane ({self.tau_membrane})")

    @property
    def n_neurons(self) -> int:
        """Network size (excitatory first, then inhibitory)."""
        return self.n_excitatory + self.n_inhibitory

    @property
    def steps_per_bin(self) -> int:
        """Simulation steps per bin."""
        return round(self.bin_width / self.dt)

    @property
    def refractory_steps(self) -> int:
        """Minimum inter-spike interval in simulation steps."""
        return round(self.refractory / self.dt)


@dataclass
class NetworkReachSample:
    """Simulated arrays in file layout: spikes ``[n, T, N]`` (uint8 counts of the recorded neurons),
    behavior ``[n, T, 2]`` (velocity), directions ``[n]`` (radians), conditions ``[n, 2]``, split codes
    ``[n]``, recorded ``[N]`` (network indices of the recorded neurons) and, when asked for, raster
    ``[n, T * steps_per_bin, N]`` (bool spikes of the recorded neurons at ``dt`` resolution)."""

    spikes: np.ndarray
    behavior: np.ndarray
    directions: np.ndarray
    conditions: np.ndarray
    split_codes: np.ndarray
    recorded: np.ndarray
    raster: np.ndarray | None = None


@dataclass(frozen=True)
class _Network:
    """Fixed network: baseline, shared loadings ``[M]``, tuning ``[3, M]`` (movement modulation, depth times
    cos and sin of the preferred direction), weights ``W [M, M]`` (pre, post), recorded indices ``[N]``."""

    baseline: np.ndarray
    shared: np.ndarray
    tuning: np.ndarray
    weights: np.ndarray
    recorded: np.ndarray


def _build_network(config: NetworkReachConfig, rng: np.random.Generator) -> _Network:
    m = config.n_neurons
    baseline = config.baseline + config.baseline_spread * rng.standard_normal(m)
    shared = config.shared_noise * rng.uniform(0.5, 1.5, m)
    depth, preferred = config.tuning * rng.uniform(0, 1, m), rng.uniform(0, 2 * np.pi, m)
    tuning = np.stack([config.movement * rng.standard_normal(m), depth * np.cos(preferred),
                       depth * np.sin(preferred)])
    connected = rng.random((m, m)) < config.connection_prob
    np.fill_diagonal(connected, False)
    j_exc = np.round(config.coupling_scale * config.j_exc / WEIGHT_GRID) * WEIGHT_GRID
    j_inh = np.round(config.coupling_scale * config.inhibition_ratio * config.j_exc / WEIGHT_GRID) * WEIGHT_GRID
    sign = np.where(np.arange(m) < config.n_excitatory, j_exc, -j_inh)[:, None]  # by presynaptic neuron
    weights = (connected * sign).astype(np.float32)
    recorded = np.sort(rng.choice(m, config.n_recorded, replace=False))
    return _Network(baseline.astype(np.float32), shared.astype(np.float32), tuning.astype(np.float32), weights,
                    recorded)


def _speed(times: np.ndarray, peak: np.ndarray, width: float) -> np.ndarray:
    """Bell-shaped speed profile ``[n, len(times)]`` (peak 1) of trials peaking at ``peak [n]``."""
    return np.exp(-0.5 * ((times[None, :] - peak[:, None]) / width) ** 2)


def _simulate(config: NetworkReachConfig, net: _Network, tuned: np.ndarray, movement: np.ndarray,
              keep_raster: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the network for all trials at once.

    ``tuned [n, M]`` is each neuron's movement drive in each trial's direction (``m_i + d_i cos(theta - p_i)``),
    ``movement [n, B + S]`` the speed term ``g s(t + lead)`` at every step (``B`` burn-in steps first).
    Returns counts ``[n, T, N_rec]`` (uint8) and the optional raster ``[n, S, N_rec]`` (bool).
    """
    n, m, k = config.n_trials, config.n_neurons, config.steps_per_bin
    n_burn = round(config.burn_in / config.dt)
    decay = np.exp(-config.dt / config.tau_membrane)
    leak, kick = np.float32(1 - decay), np.float32(config.noise * np.sqrt(1 - decay**2))
    shared_decay = np.exp(-config.dt / config.shared_tau)
    shared_kick = np.sqrt(1 - shared_decay**2)
    hold = np.int32(config.refractory_steps - 1)  # steps clamped at reset after a spike: min ISI = refractory
    counts = np.zeros((n, config.n_bins, len(net.recorded)), dtype=np.uint8)
    raster = np.zeros((n, config.n_bins * k, len(net.recorded)), dtype=bool) if keep_raster else None

    potential = rng.uniform(0, 1, (n, m)).astype(np.float32)
    clamped = np.zeros((n, m), dtype=np.int32)
    spikes = np.zeros((n, m), dtype=np.float32)
    eta = rng.standard_normal(n)
    drive = np.empty((n, m), dtype=np.float32)
    for step in range(movement.shape[1]):
        eta = shared_decay * eta + shared_kick * rng.standard_normal(n)
        np.multiply(tuned, movement[:, step, None], out=drive)
        drive += net.baseline
        drive += eta[:, None].astype(np.float32) * net.shared
        drive -= potential
        drive *= leak
        potential += drive
        potential += kick * rng.standard_normal((n, m), dtype=np.float32)
        potential += spikes @ net.weights  # spikes of the previous step: 1-step delay
        held = clamped > 0
        potential[held] = 0.0
        clamped[held] -= 1
        fired = potential >= 1.0
        potential[fired] = 0.0
        clamped[fired] = hold
        spikes = fired.astype(np.float32)
        t = step - n_burn
        if t >= 0:
            recorded = fired[:, net.recorded]
            counts[:, t // k] += recorded
            if raster is not None:
                raster[:, t] = recorded
    return counts, raster


def simulate_network_reach(config: NetworkReachConfig | None = None, keep_raster: bool = False
                           ) -> NetworkReachSample:
    """Simulate a spiking-network reach dataset (module docstring); deterministic in ``config``.

    ``keep_raster=True`` also returns the ``dt``-resolution spikes of the recorded neurons (memory
    ``n_trials * n_bins * steps_per_bin * n_recorded`` bytes).
    """
    config = config or NetworkReachConfig()
    trial_seed, network_seed, noise_seed, split_seed = np.random.SeedSequence(config.seed).spawn(4)
    split = random_split(config.n_trials, config.splits, int(split_seed.generate_state(1)[0]))
    rng = np.random.default_rng(trial_seed)
    n = config.n_trials
    duration = config.n_bins * config.bin_width
    theta = rng.uniform(0, 2 * np.pi, n)
    peak = duration * (_PEAK + _JITTER * rng.standard_normal(n))
    gain = 1 + 0.1 * rng.standard_normal(n)
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # [n, 2]
    bin_centres = (np.arange(config.n_bins) + 0.5) * config.bin_width
    speed = gain[:, None] * _speed(bin_centres, peak, _WIDTH * duration)  # [n, T]
    velocity = speed[..., None] * direction[:, None, :]  # [n, T, 2]

    net = _build_network(config, np.random.default_rng(network_seed))
    n_burn = round(config.burn_in / config.dt)
    step_times = (np.arange(-n_burn, config.n_bins * config.steps_per_bin) + 0.5) * config.dt
    movement = (gain[:, None] * _speed(step_times + config.drive_lead, peak, _WIDTH * duration)).astype(np.float32)
    tuned = np.hstack([np.ones((n, 1)), direction]).astype(np.float32) @ net.tuning  # [n, M]
    counts, raster = _simulate(config, net, tuned, movement, keep_raster, np.random.default_rng(noise_seed))
    return NetworkReachSample(counts, velocity.astype(np.float32), theta, direction, split, net.recorded, raster)


def write_network_reach(path: str | os.PathLike, config: NetworkReachConfig | None = None) -> Path:
    """Simulate and write a dataset file (conditions = [cos, sin] of the direction, behavior = velocity)."""
    config = config or NetworkReachConfig()
    sample = simulate_network_reach(config)
    return write_dataset(
        path, sample.spikes, bin_width=config.bin_width, conditions=sample.conditions, behavior=sample.behavior,
        split=sample.split_codes,
        description=f"spiking-network reach data (ldns_fast.data.network, LIF E/I network, no true rates; "
                    f"behavior = hand velocity, unitless): {config}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ldns_fast.data.network OUT.h5 [--n-trials N] [--seed S] [--coupling-scale C]``."""
    parser = argparse.ArgumentParser(prog="python -m ldns_fast.data.network",
                                     description="Write a spiking-network reach dataset (docs/data_format.md).")
    parser.add_argument("output", type=Path, help="HDF5 dataset file to write")
    defaults = NetworkReachConfig()
    parser.add_argument("--n-trials", type=int, default=defaults.n_trials)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--coupling-scale", type=float, default=defaults.coupling_scale,
                        help="multiplies every recurrent weight (0: uncoupled network)")
    args = parser.parse_args(argv)
    try:
        config = dataclasses.replace(defaults, n_trials=args.n_trials, seed=args.seed,
                                     coupling_scale=args.coupling_scale)
        path = write_network_reach(args.output, config)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {path}: {config.n_trials} trials, {config.n_bins} bins, {config.n_recorded} neurons")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
