"""Evaluation speed: the paper's metrics (``ldns_fast.metrics.compare`` with 5 bootstrap resamples) on
two sets of 2000 trials x 140 bins x 182 neurons (target: under 10 s on 2 CPU cores).

Baseline, run before each round so both share the machine's state: ``np.corrcoef`` of both sets'
pooled counts ``[N, trials * T]``, the one pairwise statistic any implementation computes.
``ratio_to_corrcoef`` (compare / baseline) says how many such passes the whole comparison costs: a
figure that carries across machines, beside the absolute seconds of this one.
"""
from __future__ import annotations

import numpy as np
from benchmarks.common import run_paired_benchmark

from ldns_fast import metrics

TRIALS, BINS, NEURONS = 2000, 140, 182
BIN_WIDTH = 0.01  # s
RATE = 0.1  # spikes per bin: 10 Hz


def poisson(seed: int) -> np.ndarray:
    """Counts ``[TRIALS, BINS, NEURONS]`` as float32, the dtype of sampled spikes (``model.sample``), so the
    timing includes validating and converting them."""
    return np.random.default_rng(seed).poisson(RATE, size=(TRIALS, BINS, NEURONS)).astype(np.float32)


def test_compare_paper_size(benchmark):
    real, generated = poisson(0), poisson(1)

    def full() -> None:
        metrics.compare(real, generated, BIN_WIDTH, n_bootstrap=5, seed=0)

    def corrcoef() -> None:
        for counts in (real, generated):
            np.corrcoef(counts.reshape(-1, NEURONS).T.astype(np.float64))

    benchmark.group = f"metrics {TRIALS}x{BINS}x{NEURONS}"
    median, baseline = run_paired_benchmark(benchmark, full, corrcoef, rounds=3)
    benchmark.extra_info.update(
        trials=TRIALS, bins=BINS, neurons=NEURONS, n_bootstrap=5, corrcoef_seconds=baseline,
        ratio_to_corrcoef=median / baseline, under_10_s=median < 10.0,
    )
