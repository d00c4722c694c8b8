"""Timing helpers shared by the benchmark files: the device, synchronised medians, pytest-benchmark runs with
an untimed set-up or a paired baseline, and same-run baselines (timings and peak memory measured once per key).

Import them as ``from benchmarks.common import ...`` (``benchmarks`` is a package; pytest puts the repository
root on ``sys.path``). ``benchmarks/conftest.py`` sets the environment (OpenMP waits, the Triton interpreter
without a GPU) before this module is imported.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from benchmarks.memory import peak_memory_bytes

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one synchronised call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    """Median wall time of ``fn`` over ``rounds`` calls after one warm-up call."""
    timed(fn)
    return statistics.median(timed(fn) for _ in range(rounds))


def paired_medians(fn: Callable[[], object], baseline: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Medians ``(fn, baseline)`` over ``rounds`` calls of each, alternated (after one warm-up call each), so
    both come from the same stretch of a machine whose speed drifts."""
    timed(fn), timed(baseline)
    pairs = [(timed(fn), timed(baseline)) for _ in range(rounds)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


class Baselines:
    """Baseline timings and peak memory measured once per key within this pytest run."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[float, int]] = {}

    def get(self, key: tuple, fn: Callable[[], object], rounds: int) -> tuple[float, int]:
        if key not in self._cache:
            self._cache[key] = (median_seconds(fn, rounds), peak_memory_bytes(fn, DEVICE))
        return self._cache[key]


def record_against_baseline(
    benchmark, baselines: Baselines, key: tuple | str, baseline_call: Callable[[], object],
    call: Callable[[], object], rounds: int, name: str, **info: object,
) -> None:
    """Time ``call`` and its peak memory; put ``{name}_seconds``, ``speedup_vs_{name}``, both peaks and
    ``memory_ratio`` (baseline peak / peak) in ``extra_info``, the baseline measured once per ``key``."""
    base_s, base_peak = baselines.get(key if isinstance(key, tuple) else (key,), baseline_call, rounds)
    peak = peak_memory_bytes(call, DEVICE)
    median = run_benchmark(benchmark, call, rounds)
    benchmark.extra_info.update(
        {f"{name}_seconds": base_s, f"speedup_vs_{name}": base_s / median, f"{name}_peak_bytes": base_peak},
        device=str(DEVICE), peak_bytes=peak, memory_ratio=base_peak / max(peak, 1), **info,
    )


def run_benchmark(benchmark, fn: Callable[[], object], rounds: int) -> float:
    """Time ``fn`` with pytest-benchmark (synchronised on CUDA); return the median seconds."""
    return run_benchmark_with_setup(benchmark, fn, rounds, None)


def run_benchmark_with_setup(
    benchmark, fn: Callable[[], object], rounds: int, setup: Callable[[], None] | None
) -> float:
    """:func:`run_benchmark` with an untimed ``setup()`` before every round (warm-up included)."""

    def call() -> None:
        fn()
        sync()

    benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    return benchmark.stats.stats.median


def run_paired_benchmark(
    benchmark, fn: Callable[[], object], baseline: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """Time ``fn`` with pytest-benchmark, running ``baseline`` (timed here) before each round.

    Returns the medians ``(fn, baseline)``: taken over the same interleaved period, so their ratio holds
    on a machine whose speed drifts (shared CPUs) better than medians from separate periods.
    """
    median, baselines = run_benchmark_against(benchmark, fn, {"baseline": baseline}, rounds)
    return median, baselines["baseline"]


def run_benchmark_against(
    benchmark, fn: Callable[[], object], baselines: dict[str, Callable[[], object]], rounds: int
) -> tuple[float, dict[str, float]]:
    """:func:`run_paired_benchmark` with several baselines, each timed once (in order) before every round.

    Returns ``fn``'s median and each baseline's median by name.
    """
    times: dict[str, list[float]] = {name: [] for name in baselines}

    def run_baselines() -> None:
        for name, baseline in baselines.items():
            times[name].append(timed(baseline))

    median = run_benchmark_with_setup(benchmark, fn, rounds, run_baselines)
    return median, {name: statistics.median(t[-rounds:]) for name, t in times.items()}
