"""Spiking-network reach data: determinism, file round trip, refractoriness, rates, tuning, coupling."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ldns_fast.data import NetworkReachConfig, read_dataset, simulate_network_reach, write_network_reach
from ldns_fast.decoding import DirectionDecoder, circular_error_degrees

SMALL = NetworkReachConfig(n_trials=60, n_bins=40, n_recorded=32, seed=3)


def _isis(raster: np.ndarray) -> np.ndarray:
    """All within-trial inter-spike intervals (steps) of a raster ``[n, S, N]``, by a direct loop."""
    gaps = [np.diff(np.flatnonzero(raster[i, :, j])) for i in range(raster.shape[0]) for j in range(raster.shape[2])]
    return np.concatenate(gaps)


def _pairwise_correlations(spikes: np.ndarray) -> np.ndarray:
    """Pearson correlations (float64) of bin counts pooled over trials, upper triangle of ``[N, N]``."""
    flat = spikes.reshape(-1, spikes.shape[-1]).astype(np.float64)
    return np.corrcoef(flat.T)[np.triu_indices(flat.shape[1], 1)]


def test_network_reach_is_deterministic_in_the_seed_and_encodes_the_direction() -> None:
    sample = simulate_network_reach(SMALL)
    assert sample.spikes.dtype == np.uint8 and sample.spikes.shape == (60, 40, 32)
    assert sample.behavior.shape == (60, 40, 2) and len(np.unique(sample.recorded)) == 32
    np.testing.assert_allclose(sample.conditions, np.stack([np.cos(sample.directions), np.sin(sample.directions)], 1))
    summed = sample.behavior.sum(1)  # the hand moves along the trial's direction
    np.testing.assert_allclose(np.arctan2(summed[:, 1], summed[:, 0]) % (2 * np.pi), sample.directions, atol=1e-5)
    again = simulate_network_reach(SMALL)
    other = simulate_network_reach(dataclasses.replace(SMALL, seed=4))
    assert np.array_equal(again.spikes, sample.spikes) and np.array_equal(again.split_codes, sample.split_codes)
    assert not np.array_equal(other.spikes, sample.spikes)


def test_network_reach_file_round_trip(tmp_path: Path) -> None:
    data = read_dataset(write_network_reach(tmp_path / "net.h5", SMALL))
    sample = simulate_network_reach(SMALL)
    assert np.array_equal(data.spikes, sample.spikes) and data.bin_width == SMALL.bin_width
    np.testing.assert_allclose(data.conditions, sample.conditions)
    np.testing.assert_allclose(data.behavior, sample.behavior)
    assert np.array_equal(data.split_codes, sample.split_codes)
    assert "NetworkReachConfig" in data.description


def test_raster_respects_the_refractory_period_and_bins_into_the_counts() -> None:
    sample = simulate_network_reach(SMALL, keep_raster=True)
    k = SMALL.steps_per_bin
    assert sample.raster.shape == (60, 40 * k, 32)
    assert np.array_equal(sample.raster.reshape(60, 40, k, 32).sum(2), sample.spikes)
    assert _isis(sample.raster).min() >= SMALL.refractory_steps


def test_refractory_period_is_the_minimum_interval_of_a_saturated_neuron() -> None:
    # drive 5 with tau = 2 dt lifts a reset neuron past threshold in one step (1 - e^-0.5) * 5 > 1, so
    # without noise or coupling every neuron fires exactly once per refractory period
    config = dataclasses.replace(SMALL, n_trials=4, refractory=0.003, tau_membrane=0.002, baseline=5.0,
                                 baseline_spread=0.0, noise=0.0, shared_noise=0.0, coupling_scale=0.0)
    isis = _isis(simulate_network_reach(config, keep_raster=True).raster)
    assert len(isis) > 0 and np.all(isis == 3)


def test_default_rates_lie_in_the_band_and_neurons_are_direction_tuned() -> None:
    config = NetworkReachConfig(n_trials=60)
    sample = simulate_network_reach(config)
    assert 15 <= sample.spikes.mean() / config.bin_width <= 20  # Hz, over recorded neurons
    train, test = slice(0, 30), slice(30, 60)
    decoder = DirectionDecoder().fit(sample.spikes[train], sample.directions[train])
    error = circular_error_degrees(decoder.predict(sample.spikes[test]), sample.directions[test])
    assert error.mean() < 20  # chance is 90 degrees


def test_recurrent_coupling_changes_pairwise_correlations() -> None:
    coupled = _pairwise_correlations(simulate_network_reach(SMALL).spikes)
    uncoupled = _pairwise_correlations(simulate_network_reach(dataclasses.replace(SMALL, coupling_scale=0.0)).spikes)
    assert np.nanmean(coupled) > np.nanmean(uncoupled) + 0.008


@pytest.mark.parametrize("change, message", [
    (dict(n_recorded=300), "n_recorded"), (dict(bin_width=0.0055), "bin_width"), (dict(refractory=0.0), "refractory"),
    (dict(connection_prob=1.5), "connection_prob"), (dict(noise=-0.1), "noise"), (dict(n_inhibitory=0), "n_inhibitory"),
    (dict(dt=0.05), "dt"),
])
def test_config_rejects_bad_values(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkReachConfig(**change)


def test_bad_splits_fail_before_simulating() -> None:
    with pytest.raises(ValueError, match="fractions"):
        simulate_network_reach(dataclasses.replace(SMALL, splits=(0.5, 0.5, 0.5)))
