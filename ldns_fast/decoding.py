"""Reach-direction decoding from spike counts: does a generated trial carry its requested direction?

Features: square-rooted spike counts of every neuron summed in ``n_windows`` equal time windows
(``[n, N * n_windows]``). A ridge regression maps them to ``[cos theta, sin theta]``; the decoded
direction is ``atan2`` of the prediction.
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


class DirectionDecoder:
    """Ridge regression from :func:`window_features` to ``[cos, sin]`` of the direction."""

    def __init__(self, ridge: float = 1.0, n_windows: int = 5) -> None:
        self.ridge, self.n_windows = ridge, n_windows

    def fit(self, counts: np.ndarray, directions: np.ndarray) -> DirectionDecoder:
        """Fit on counts ``[n, T, N]`` and directions ``[n]`` (radians)."""
        x = window_features(counts, self.n_windows)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-8
        z = np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])
        y = np.stack([np.cos(directions), np.sin(directions)], axis=1)
        penalty = self.ridge * np.eye(z.shape[1])
        penalty[-1, -1] = 0.0  # no shrinkage of the intercept
        self.weights = np.linalg.solve(z.T @ z + penalty, z.T @ y)
        return self

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Decoded directions ``[n]`` (radians) of counts ``[n, T, N]``."""
        x = (window_features(counts, self.n_windows) - self.mean) / self.scale
        y = np.hstack([x, np.ones((len(x), 1))]) @ self.weights
        return np.arctan2(y[:, 1], y[:, 0])


def circular_error_degrees(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Absolute angular difference in degrees, in ``[0, 180]``."""
    return np.degrees(np.abs(np.angle(np.exp(1j * (predicted - target)))))
