"""Synthetic reach data and the direction decoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ldns_fast.data import read_dataset
from ldns_fast.data.reach import ReachConfig, simulate_reach, write_reach
from ldns_fast.decoding import DirectionDecoder, RidgeDecoder, circular_error_degrees, r2_score, window_features

SMALL = ReachConfig(n_trials=300, n_bins=60, n_neurons=24, seed=3)


def test_reach_conditions_and_behaviour_encode_the_direction() -> None:
    sample = simulate_reach(SMALL)
    np.testing.assert_allclose(sample.conditions, np.stack([np.cos(sample.directions), np.sin(sample.directions)], 1))
    summed = sample.behavior.sum(1)  # the hand moves along the requested direction
    np.testing.assert_allclose(np.arctan2(summed[:, 1], summed[:, 0]) % (2 * np.pi), sample.directions, atol=1e-5)
    assert sample.spikes.dtype == np.uint8 and sample.spikes.shape == (300, 60, 24)
    again, other = simulate_reach(SMALL), simulate_reach(ReachConfig(**{**SMALL.__dict__, "seed": 4}))
    assert np.array_equal(again.spikes, sample.spikes) and not np.array_equal(other.spikes, sample.spikes)
    with pytest.raises(ValueError, match="n_bins"):
        ReachConfig(n_bins=0)


def test_reach_file_round_trip(tmp_path: Path) -> None:
    data = read_dataset(write_reach(tmp_path / "r.h5", SMALL))
    sample = simulate_reach(SMALL)
    assert np.array_equal(data.spikes, sample.spikes)
    np.testing.assert_allclose(data.conditions, sample.conditions)
    np.testing.assert_allclose(data.behavior, sample.behavior)


def test_direction_decoder_recovers_real_directions() -> None:
    sample = simulate_reach(SMALL)
    train, test = sample.split_codes == 0, sample.split_codes == 2
    decoder = DirectionDecoder().fit(sample.spikes[train], sample.directions[train])
    error = circular_error_degrees(decoder.predict(sample.spikes[test]), sample.directions[test])
    assert error.mean() < 15
    shuffled = circular_error_degrees(decoder.predict(sample.spikes[test]), np.random.default_rng(0).permutation(
        sample.directions[test]))
    assert shuffled.mean() > 60  # chance is 90 degrees


def test_window_features_and_circular_error_against_direct_formulas() -> None:
    counts = np.random.default_rng(1).poisson(1.0, (4, 10, 3))
    features = window_features(counts, n_windows=2)
    expected = np.sqrt(np.concatenate([counts[:, :5].sum(1), counts[:, 5:].sum(1)], axis=1))
    np.testing.assert_allclose(features, expected)
    np.testing.assert_allclose(circular_error_degrees(np.radians([359.0, 90.0]), np.radians([1.0, 270.0])),
                               [2.0, 180.0], atol=1e-9)


def test_ridge_decoder_and_r2_against_least_squares() -> None:
    rng = np.random.default_rng(2)
    counts = rng.poisson(2.0, (40, 10, 3))
    targets = rng.normal(size=(40, 2))
    x = window_features(counts, n_windows=2)
    z = np.hstack([(x - x.mean(0)) / x.std(0), np.ones((40, 1))])
    expected = z @ np.linalg.lstsq(z, targets, rcond=None)[0]
    decoder = RidgeDecoder(ridge=1e-9, n_windows=2).fit(counts, targets)
    np.testing.assert_allclose(decoder.predict(counts), expected, rtol=1e-6, atol=1e-8)
    shrunk = RidgeDecoder(ridge=1e3, n_windows=2).fit(counts, targets).predict(counts)
    assert np.abs(shrunk - targets.mean(0)).max() < np.abs(expected - targets.mean(0)).max()  # towards the mean
    angles = rng.uniform(0, 2 * np.pi, 40)
    ridge = RidgeDecoder().fit(counts, np.stack([np.cos(angles), np.sin(angles)], 1)).predict(counts)
    np.testing.assert_allclose(DirectionDecoder().fit(counts, angles).predict(counts),
                               np.arctan2(ridge[:, 1], ridge[:, 0]))
    with pytest.raises(ValueError, match=r"targets must have shape \[n=40, K\]"):
        RidgeDecoder().fit(counts, targets[:5])

    predicted = targets + rng.normal(scale=0.5, size=targets.shape)
    by_hand = [1 - np.sum((targets[:, k] - predicted[:, k]) ** 2) / np.sum((targets[:, k] - targets[:, k].mean()) ** 2)
               for k in range(2)]
    assert r2_score(predicted, targets) == pytest.approx(np.mean(by_hand))
    constant = np.hstack([targets[:, :1], np.ones((40, 1))])  # a constant column is left out
    assert r2_score(np.hstack([predicted[:, :1], np.zeros((40, 1))]), constant) == pytest.approx(by_hand[0])
    assert np.isnan(r2_score(predicted, np.ones_like(targets)))
