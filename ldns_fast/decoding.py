"""Condition decoding from spike counts: does a generated or reconstructed trial carry its condition?

Features: square-rooted spike counts of every neuron summed in ``n_windows`` equal time windows
(``[n, N * n_windows]``), standardised with the training trials' statistics. :class:`RidgeDecoder`
maps them to any vector of targets ``[n, K]`` (scored with :func:`r2_score`); :class:`DirectionDecoder`
regresses ``[cos theta, sin theta]`` and decodes the direction as ``atan2`` of the prediction (scored
with :func:`circular_error_degrees`).
"""
from __future__ import annotations

import numpy as np


def window_features(counts: np.ndarray, n_windows: int = 5) -> np.ndarray:
    """Spike counts ``[n, T, N]`` -> features ``[n, N * n_windows]`` (sqrt of per-window sums)."""
    if counts.ndim != 3:
        raise ValueError(f"counts must have shape [n, T, N], got {counts.shape}")
    edges = np.linspace(0, counts.shape[1], n_windows + 1).round().astype(int)
    sums = np.stack([counts[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)  # [n, W, N]
    return np.sqrt(sums.reshape(len(counts), -1).astype(np.float64))


class RidgeDecoder:
    """Ridge regression (unpenalised intercept) from :func:`window_features` to targets ``[n, K]``."""

    def __init__(self, ridge: float = 1.0, n_windows: int = 5) -> None:
        self.ridge, self.n_windows = ridge, n_windows

    def fit(self, counts: np.ndarray, targets: np.ndarray) -> RidgeDecoder:
        """Fit on counts ``[n, T, N]`` and targets ``[n, K]``."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or len(targets) != len(counts):
            raise ValueError(f"targets must have shape [n={len(counts)}, K], got {targets.shape}")
        x = window_features(counts, self.n_windows)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-8
        z = np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])
        penalty = self.ridge * np.eye(z.shape[1])
        penalty[-1, -1] = 0.0  # no shrinkage of the intercept
        self.weights = np.linalg.solve(z.T @ z + penalty, z.T @ targets)
        return self

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Predicted targets ``[n, K]`` of counts ``[n, T, N]``."""
        x = (window_features(counts, self.n_windows) - self.mean) / self.scale
        return np.hstack([x, np.ones((len(x), 1))]) @ self.weights


class DirectionDecoder(RidgeDecoder):
    """A :class:`RidgeDecoder` of ``[cos, sin]`` of a direction; fits and predicts directions in radians."""

    def fit(self, counts: np.ndarray, directions: np.ndarray) -> DirectionDecoder:
        """Fit on counts ``[n, T, N]`` and directions ``[n]`` (radians)."""
        super().fit(counts, np.stack([np.cos(directions), np.sin(directions)], axis=1))
        return self

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Decoded directions ``[n]`` (radians) of counts ``[n, T, N]``."""
        y = super().predict(counts)
        return np.arctan2(y[:, 1], y[:, 0])


def circular_error_degrees(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Absolute angular difference in degrees, in ``[0, 180]``."""
    return np.degrees(np.abs(np.angle(np.exp(1j * (predicted - target)))))


def r2_score(predicted: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination of ``predicted`` for ``target`` (both ``[n, K]``), averaged over the
    ``K`` columns with variance (NaN when none has any)."""
    if predicted.shape != target.shape or target.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} must both be [n, K]")
    total = np.square(target - target.mean(0)).sum(0)
    varying = total > 0
    if not varying.any():
        return float("nan")
    residual = np.square(target - predicted).sum(0)
    return float(np.mean(1.0 - residual[varying] / total[varying]))
