"""Every Triton kernel compiles for CUDA sm_80 and sm_90 within its budgets, on a machine without a GPU.

:mod:`ldns_fast.kernels.aot` runs the Triton launchers on meta tensors of the LDNS shapes (H = 64..512,
N = 64, L = 140 and 16,384; float32, and bfloat16 for the fused ops), collects the launches they make
(grid, block constexprs, warps, argument types, Triton's integer specialisations) and compiles each
distinct one once per capability. Budgets, from ptxas and the compiled kernel: no register spills,
at most 255 registers per thread, shared memory within the target's limit, under 60 CPU seconds per
compile. It runs in a subprocess: this test process runs Triton in interpreter mode, which cannot compile.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from ldns_fast.kernels.triton_backend import KERNELS

pytestmark = pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")

CAPABILITIES = (80, 90)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("aot") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "ldns_fast.kernels.aot", "--json", str(path),
         "--capabilities", *map(str, CAPABILITIES)],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    if not path.exists():
        pytest.fail(f"ahead-of-time compile failed (exit {done.returncode}):\n{done.stderr[-6000:]}")
    return json.loads(path.read_text())


def test_every_kernel_is_launched_and_compiled(report):
    """A kernel added to triton_kernels without a launch at the LDNS shapes (or a helper no kernel calls)
    is reported uncovered."""
    assert report["uncovered"] == []
    assert report["kernels"] == sorted(KERNELS)


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_within_budget(report, kernel, capability):
    results = [r for r in report["results"] if r["kernel"] == kernel and r["capability"] == capability]
    assert results, f"{kernel} was not compiled for sm_{capability}"
    for r in results:
        assert r["registers"] > 0 and r["ptx_lines"] > 0
        where = f"{kernel} sm_{capability} {r['dtypes']} {r['constexprs']} {r['specialised']} ({r['shapes']})"
        assert r["violations"] == [], f"{where}: {'; '.join(r['violations'])}"
