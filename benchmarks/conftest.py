"""Benchmark set-up: device choice, Triton interpreter off the timing path, same-run baselines, ``--toy``.

The helpers the benchmark files call (timing, baselines, the device) live in :mod:`benchmarks.common`.
"""
from __future__ import annotations

import os

# KeOps and torch run separate OpenMP pools in one process; spinning idle threads of one slow the other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.common import DEVICE, Baselines  # noqa: E402


def pytest_addoption(parser) -> None:
    parser.addoption("--toy", action="store_true",
                     help="dry run (run_gpu.py --dry-run): only the first case of each benchmark function")


def pytest_collection_modifyitems(config, items) -> None:
    if not config.getoption("--toy"):
        return
    seen: set[tuple[str, str]] = set()
    keep, drop = [], []
    for item in items:
        key = (item.module.__name__, item.originalname)
        (drop if key in seen else keep).append(item)
        seen.add(key)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def baselines() -> Baselines:
    return Baselines()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return DEVICE
