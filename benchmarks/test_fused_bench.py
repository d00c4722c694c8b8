"""Fused denoiser-block ops vs the unfused module ops they replace, forward + backward at a denoiser shape.

``extra_info``: ``speedup_vs_unfused`` (unfused median / fused median), ``peak_bytes``,
``unfused_peak_bytes`` and ``memory_ratio`` (unfused peak / fused peak), all measured in the same run.
Run: ``pytest benchmarks/test_fused_bench.py --benchmark-only``. On CPU only the torch path is timed (the
Triton interpreter is a correctness path); on CUDA the Triton kernels are timed beside it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from benchmarks.common import DEVICE, record_against_baseline

from ldns_fast.kernels import backend_status, gelu_gate_residual, modulated_norm
from ldns_fast.models.layers import ChannelNorm, apply_mask

B, C, L = 64, 64, 128  # batch 64 of the Lorenz denoiser (hidden 64) at the benchmark length
ROUNDS = 10 if DEVICE.type == "cpu" else 50


def timed_backends() -> list:
    ok, why = backend_status("triton", DEVICE)
    if DEVICE.type == "cpu":
        ok, why = False, "the Triton interpreter is a correctness path on CPU, not timed"
    return ["torch", pytest.param("triton", marks=pytest.mark.skipif(not ok, reason=why))]


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = dict(x=(B, C, L), y=(B, C, L), shift=(B, C, 1), scale=(B, C, 1), gate=(B, C, 1))
    named = {name: torch.randn(shape, generator=g).to(DEVICE) for name, shape in shapes.items()}
    named = {name: t.requires_grad_() for name, t in named.items()}
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    named["mask"] = (torch.arange(L)[None, :] < lengths[:, None]).float().to(DEVICE)
    return named


def forward_backward(fn, args: list[torch.Tensor]):
    wrt = [a for a in args if a.requires_grad]

    def call() -> None:
        out = fn(*args)
        torch.autograd.grad(out, wrt, torch.ones_like(out))

    return call



@pytest.mark.parametrize("backend", timed_backends())
def test_modulated_norm(benchmark, baselines, backend):
    t = inputs()
    norm = ChannelNorm(C, affine=False).to(DEVICE)
    args = [t["x"], t["shift"], t["scale"], t["mask"]]
    benchmark.group = f"modulated_norm B={B} C={C} L={L} fwd+bwd"
    unfused = forward_backward(lambda x, shift, scale, mask: apply_mask(norm(x) * (1 + scale) + shift, mask),
                               args)
    fused = forward_backward(lambda *a: modulated_norm(*a, backend=backend), args)
    record_against_baseline(benchmark, baselines, "modulated_norm", unfused, fused, ROUNDS, "unfused",
                            backend=backend, B=B, C=C, L=L, mode="fwd+bwd")


@pytest.mark.parametrize("backend", timed_backends())
def test_gelu_gate_residual(benchmark, baselines, backend):
    t = inputs()
    args = [t["x"], t["y"], t["gate"]]
    benchmark.group = f"gelu_gate_residual B={B} C={C} L={L} fwd+bwd"
    unfused = forward_backward(lambda x, y, gate: x + gate * F.gelu(y), args)
    fused = forward_backward(lambda *a: gelu_gate_residual(*a, backend=backend), args)
    record_against_baseline(benchmark, baselines, "gelu_gate_residual", unfused, fused, ROUNDS, "unfused",
                            backend=backend, B=B, C=C, L=L, mode="fwd+bwd")
