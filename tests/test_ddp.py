"""Distributed training (:class:`ldns_fast.training.loop.DistributedContext`) through torchrun on CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_FLAGS

from ldns_fast.pipeline import LDNS

pytestmark = pytest.mark.usefixtures("lorenz_cache")


def test_torchrun_ddp_on_cpu_trains_and_writes_loadable_checkpoints(tmp_path: Path) -> None:
    """Two gloo ranks through torchrun: rank 0 writes checkpoints that load and sample."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ldns_fast.train", "--out", str(out), "--device", "cpu", *TINY_FLAGS]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = LDNS.load(out).sample(2, length=8, steps=2, seed=0)
    assert samples.spikes.shape == (2, 12, 8)
