"""Kernel backends at LDNS shapes vs the naive materialising formula, measured in the same run.

``extra_info``: ``speedup_vs_naive`` (naive median / backend median), ``peak_bytes``,
``naive_peak_bytes`` and ``memory_ratio`` (naive peak / backend peak). Run:
``pytest benchmarks/test_kernels_bench.py --benchmark-only``. On CPU the Triton interpreter is a
correctness path, not a speed path, so it is not timed there.
"""
from __future__ import annotations

import pytest
import torch
from benchmarks.common import DEVICE, record_against_baseline

from ldns_fast.kernels import backend_status, cauchy_kernel, cauchy_naive, vandermonde_kernel, vandermonde_naive

NP = 32  # state size N = 64 as conjugate pairs
ROUNDS = 3 if DEVICE.type == "cpu" else 20
# (H, L): the monkey length (140), medium and long recordings.
VANDERMONDE_SHAPES = [(256, 140), (256, 4096), (512, 4096), (256, 16384)]
# (H, L) for Cauchy rows = 4 H (the DPLR kernel's four sums); the naive formula needs ~20 GB at H=256, L=16k.
CAUCHY_SHAPES = [(256, 140), (256, 4096), (128, 16384)]


def timed_backends() -> list:
    params = []
    for name in ("torch", "keops", "triton"):
        ok, why = backend_status(name, DEVICE)
        if name == "triton" and DEVICE.type == "cpu":
            ok, why = False, "the Triton interpreter is a correctness path on CPU, not timed"
        params.append(pytest.param(name, marks=pytest.mark.skipif(not ok, reason=why)))
    return params


def ssm_inputs(shape: tuple[int, ...], grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=g, dtype=torch.complex64)
    x = torch.complex(-torch.empty(shape).uniform_(1e-3, 0.5, generator=g),
                      torch.empty(shape).uniform_(-3, 3, generator=g))
    return v.to(DEVICE).requires_grad_(grad), x.to(DEVICE).requires_grad_(grad)


def make_call(fn, inputs: tuple[torch.Tensor, ...], backward: bool):
    def call() -> None:
        out = fn(*inputs)
        if backward:
            grad = torch.ones_like(out)
            torch.autograd.grad(out, inputs, grad)

    return call



@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("H,L", VANDERMONDE_SHAPES)
@pytest.mark.parametrize("backend", timed_backends())
def test_vandermonde(benchmark, baselines, backend, H, L, mode):
    backward = mode == "fwd+bwd"
    inputs = ssm_inputs((H, NP), backward)
    benchmark.group = f"vandermonde H={H} Np={NP} L={L} {mode}"
    naive_call = make_call(lambda v, x: vandermonde_naive(v, x, L), inputs, backward)
    call = make_call(lambda v, x: vandermonde_kernel(v, x, L, backend), inputs, backward)
    record_against_baseline(benchmark, baselines, ("vandermonde", H, L, mode), naive_call, call, ROUNDS, "naive",
                            backend=backend, H=H, Np=NP, L=L, mode=mode, elements=H * NP * L)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("H,L", CAUCHY_SHAPES)
@pytest.mark.parametrize("backend", timed_backends())
def test_cauchy(benchmark, baselines, backend, H, L, mode):
    backward = mode == "fwd+bwd"
    v, w = ssm_inputs((4, H, NP), backward)
    w = w[0].detach().requires_grad_(backward)  # poles shared by the four sums
    k = torch.arange((L + 1) // 2, device=DEVICE)  # the DPLR kernel's finite frequency nodes
    z = (2j * torch.tan(torch.pi * k / L)).to(torch.complex64)
    benchmark.group = f"cauchy rows={4 * H} Np={NP} M={z.numel()} {mode}"
    naive_call = make_call(lambda v, w: cauchy_naive(v, z, w), (v, w), backward)
    call = make_call(lambda v, w: cauchy_kernel(v, z, w, backend), (v, w), backward)
    record_against_baseline(benchmark, baselines, ("cauchy", H, L, mode), naive_call, call, ROUNDS, "naive",
                            backend=backend, rows=4 * H, Np=NP, M=z.numel(), mode=mode,
                            elements=4 * H * NP * z.numel())
