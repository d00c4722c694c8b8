"""Spike-history observation model at the realism study's size: 700 trials x 96 neurons x 140 bins.

Synthetic smooth rates (about 0.1 spikes per bin) and Poisson counts drawn from them; default history (20
bins) and coupling lags (5). For coupling ranks 4 and 8 it times the two costs the coupling adds to:

- ``objective``: one evaluation of the fit's penalised NLL and its gradient, the unit an LBFGS fit repeats
  (one or two per iteration, up to 25 in a hard line search);
- ``sample``: sampling all 700 trials autoregressively.

Each is paired with the uncoupled model (rank 0), run before every round
(:func:`benchmarks.common.run_paired_benchmark`), so ``ratio_to_rank0`` compares the same stretch of time on a
shared machine.
Run: ``pytest benchmarks/test_spike_history_bench.py --benchmark-only``.
"""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from benchmarks.common import DEVICE, run_paired_benchmark

from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel

TRIALS, NEURONS, BINS = 700, 96, 140


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Rates and counts ``[TRIALS, NEURONS, BINS]`` on the benchmark device."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(BINS, dtype=torch.float32)
    freq = 0.02 + 0.06 * torch.rand(TRIALS, NEURONS, 1, generator=g)
    phase = 2 * math.pi * torch.rand(TRIALS, NEURONS, 1, generator=g)
    rates = 0.07 * torch.exp(1.5 * torch.sin(2 * math.pi * freq * t + phase))
    return rates.to(DEVICE), torch.poisson(rates, generator=g).to(DEVICE)


def objective(rank: int, rates: torch.Tensor, spikes: torch.Tensor) -> Callable[[], None]:
    """One evaluation of the fit's objective and gradient for a model of coupling ``rank``."""
    config = SpikeHistoryConfig(coupling_rank=rank)
    model = SpikeHistoryModel.from_config(NEURONS, config).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():  # nonzero coupling, so every term does real work
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE))
    inputs = model._prepare(spikes, rates, None)

    def run() -> None:
        model.zero_grad()
        model._objective(inputs, config).backward()

    return run


def sampler(rank: int, rates: torch.Tensor) -> Callable[[], None]:
    model = SpikeHistoryModel.from_config(NEURONS, SpikeHistoryConfig(coupling_rank=rank)).to(DEVICE)
    return lambda: model.sample(rates, torch.Generator(DEVICE).manual_seed(2))


@pytest.mark.parametrize("rank", [4, 8])
def test_objective(benchmark, rank):
    rates, spikes = data()
    benchmark.group = f"spike history objective {TRIALS}x{NEURONS}x{BINS}"
    median, baseline = run_paired_benchmark(
        benchmark, objective(rank, rates, spikes), objective(0, rates, spikes), rounds=3
    )
    benchmark.extra_info.update(rank=rank, rank0_seconds=baseline, ratio_to_rank0=median / baseline)


@pytest.mark.parametrize("rank", [4, 8])
def test_sample(benchmark, rank):
    rates, _ = data()
    benchmark.group = f"spike history sample {TRIALS}x{NEURONS}x{BINS}"
    median, baseline = run_paired_benchmark(benchmark, sampler(rank, rates), sampler(0, rates), rounds=3)
    benchmark.extra_info.update(rank=rank, rank0_seconds=baseline, ratio_to_rank0=median / baseline)
