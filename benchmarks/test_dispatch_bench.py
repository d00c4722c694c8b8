"""``backend="auto"`` against every kernel backend at each shape, forward and backward, in the same run.

For each kernel (S4D Vandermonde with ``2 H`` rows, a bidirectional layer; DPLR Cauchy with ``6 x H``
rows sharing ``H`` pole sets, the bidirectional DPLR kernel's sums) and each ``(H, L)``, every backend
that runs here is timed (median of ``ROUNDS`` after a warm-up), then ``auto`` is timed by
pytest-benchmark. ``extra_info``: each backend's seconds, ``auto_backend``, ``best_backend`` and
``auto_vs_best`` (best median / auto median; 1 means auto is as fast as the best). Left out: the naive
formula beyond :data:`NAIVE_LIMIT` materialised terms (memory), keops beyond L = 2,048 (measured 20-50x
slower than the torch path there, minutes per call), the Triton interpreter on CPU (a correctness path).
Timed with the heap allocator settings of
:func:`benchmarks.memory.timing_allocator`. Run: ``pytest benchmarks/test_dispatch_bench.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from benchmarks.common import DEVICE, median_seconds, run_benchmark
from benchmarks.memory import timing_allocator

from ldns_fast.kernels import available_backends, cauchy_kernel, vandermonde_kernel
from ldns_fast.kernels.api import resolve_backend
from ldns_fast.ssm.ssm_kernels import bilinear_nodes

NP = 32  # state size 64 as conjugate pairs
NAIVE_LIMIT = 1 << 27  # materialised complex terms (1 GiB in complex64)
KEOPS_MAX_LENGTH = 2048
SHAPES = [(H, L) for H in (64, 256, 512) for L in (140, 2048, 16384, 65536)]


def problem(kind: str, H: int, L: int):
    """``(call(backend), terms)``: one forward and backward of the kernel, and the complex terms the naive
    formula materialises for it."""
    g = torch.Generator().manual_seed(0)
    rows = 2 * H if kind == "vandermonde" else 6 * H
    v = torch.complex(torch.randn(rows, NP, generator=g), torch.randn(rows, NP, generator=g)).to(DEVICE)
    poles = H * 2 if kind == "vandermonde" else H
    x = torch.complex(-torch.empty(poles, NP).uniform_(1e-3, 0.1, generator=g),
                      torch.empty(poles, NP).uniform_(-3, 3, generator=g)).to(DEVICE)
    v.requires_grad_(), x.requires_grad_()
    if kind == "vandermonde":
        def call(backend: str) -> None:
            out = vandermonde_kernel(v, x, L, backend)
            torch.autograd.grad(out, (v, x), torch.ones_like(out))

        return call, rows * NP * L
    z, _ = bilinear_nodes(L, torch.complex64, DEVICE)
    numerators = v.reshape(6, H, NP)

    def call(backend: str) -> None:
        out = cauchy_kernel(numerators, z, x, backend)
        torch.autograd.grad(out, (v, x), torch.ones_like(out))

    return call, rows * NP * z.numel()


def candidates(terms: int, L: int) -> list[str]:
    out = []
    for name in available_backends(DEVICE):
        if (name == "naive" and terms > NAIVE_LIMIT) or (name == "keops" and L > KEOPS_MAX_LENGTH):
            continue
        if name == "triton" and DEVICE.type == "cpu":
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("H,L", SHAPES)
@pytest.mark.parametrize("kind", ["vandermonde", "cauchy"])
def test_auto_dispatch(benchmark, kind, H, L):
    benchmark.group = f"auto dispatch {kind}"
    call, terms = problem(kind, H, L)
    chosen = resolve_backend("auto", DEVICE, terms)
    rounds = 3 if L <= 2048 else 2 if L <= 16384 else 1
    with timing_allocator():
        seconds = {name: median_seconds(lambda: call(name), rounds) for name in candidates(terms, L)}
        median = run_benchmark(benchmark, lambda: call("auto"), rounds)
    best = min(seconds, key=seconds.get)
    benchmark.extra_info.update(
        device=str(DEVICE), H=H, L=L, auto_backend=chosen, best_backend=best,
        auto_vs_best=seconds[best] / median, **{f"{name}_seconds": s for name, s in seconds.items()},
    )
