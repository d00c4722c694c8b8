"""Benchmark set-up: device choice, Triton interpreter off the timing path, same-run baselines, ``--toy``.

The helpers the benchmark files call (timing, baselines, the device) live in :mod:`benchmarks.common`.
"""
from __future__ import annotations

import os

# OpenMP keeps its default wait policy (idle threads spin briefly before sleeping), as in a user's training or
# sampling process: OMP_WAIT_POLICY=PASSIVE, set here before, made a denoiser training step 1.3-1.7x slower on
# 2 cores (every torch op woke sleeping threads), most for code of many small ops such as the DPLR kernel.

import pytest
import torch

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
