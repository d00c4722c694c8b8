"""Training and sampling steps at the paper's Lorenz sizes against two naive baselines, same run.

- **naive kernels**: the same model with ``backend="naive"``: the S4 kernels by the materialising formulas
  (every Cauchy or Vandermonde term held at once, as the research code computes them); every other layer is
  this library's, so this ratio measures the kernels alone;
- **naive implementation**: the naive kernels and the textbook forms of the other layers (zero-padded FFT
  convolution with autograd, ``Conv1d`` 1x1 layers, ``layer_norm`` on the transposed sequence;
  :func:`benchmarks.textbook.textbook_layers`), as a straightforward implementation writes the whole model.

Batch 64, state 64, random weights, DPLR and S4D layers, L = 256 and 2,048:

- ``test_denoiser_step[recomputed]``: forward and backward of the denoiser (4 blocks x 64 channels), the
  kernels recomputed as in training;
- ``test_denoiser_step[cached]``: a sampling step (no gradient), the kernel spectra cached per length;
- ``test_autoencoder_step``: forward, loss and backward of the autoencoder (4 blocks x 256 channels);
- ``test_retained_heap``: our DPLR autoencoder step in the trainer's heap (:func:`ldns_fast.training.heap.retained_heap`,
  large blocks reused from step to step) against glibc's defaults, both in steady state (a step after a step);
  ``extra_info["speedup_vs_default_heap"]``.

Each round runs both baselines, then ours (:func:`benchmarks.common.run_benchmark_against`), so all medians
come from the same stretch of a machine whose speed drifts; 9 rounds at L = 256, 3 at 2,048. Timed with the
heap allocator settings of :func:`benchmarks.memory.timing_allocator`. ``extra_info``: ``naive_seconds`` and
``speedup_vs_naive`` (naive kernels' median / ours), ``naive_implementation_seconds`` and
``speedup_vs_naive_implementation``, and, for the recomputed steps, ``kernel_seconds`` and
``naive_kernel_seconds`` (the model's S4 kernels alone, forward and backward, paired the same way) and
``ceiling_vs_naive``: the naive-kernels median over ours without its kernels, the speedup over that baseline
if our kernels took no time.
Run: ``pytest benchmarks/test_training_bench.py --benchmark-only``.
"""
from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import pytest
import torch
from benchmarks.common import DEVICE, paired_medians, run_benchmark_against, run_benchmark_with_setup, timed
from benchmarks.memory import timing_allocator
from benchmarks.textbook import textbook_layers
from torch import nn

from ldns_fast.models import Autoencoder, AutoencoderConfig, Denoiser, DenoiserConfig, autoencoder_loss
from ldns_fast.ssm import S4
from ldns_fast.training.heap import retained_heap

BATCH = 64
CASES = [(mode, L) for L in (256, 2048) for mode in ("dplr", "diag")]


def rounds(L: int) -> int:
    return 9 if L <= 256 else 3


def denoiser_step(mode: str, L: int, backend: str, cached: bool) -> tuple[Callable[[], None], nn.Module]:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(ssm_mode=mode, backend=backend)).to(DEVICE)
    with torch.no_grad():  # leave the adaLN-Zero identity so every block does real work
        for block in model.blocks:
            block.modulation.weight.normal_(0, 0.02)
    x = torch.randn(BATCH, model.config.latent, L, device=DEVICE)
    t = torch.randint(0, 1000, (BATCH,), device=DEVICE)

    def call() -> None:
        if cached:
            with torch.no_grad():
                model(x, t)
        else:
            model.zero_grad(set_to_none=True)
            model(x, t).square().mean().backward()

    return call, model


def autoencoder_step(mode: str, L: int, backend: str) -> tuple[Callable[[], None], nn.Module]:
    torch.manual_seed(0)
    config = AutoencoderConfig(ssm_mode=mode, backend=backend)
    model = Autoencoder(config).to(DEVICE)
    spikes = torch.poisson(torch.full((BATCH, config.n_neurons, L), 0.2, device=DEVICE))
    mask = torch.ones(BATCH, L, device=DEVICE)

    def call() -> None:
        model.zero_grad(set_to_none=True)
        autoencoder_loss(model, config, spikes, mask, torch.Generator(DEVICE).manual_seed(0))["loss"].backward()

    return call, model


def kernels_call(model: nn.Module, L: int) -> Callable[[], None]:
    """Forward and backward of the model's S4 kernels at length ``L`` (what a recomputed step spends on them)."""
    layers = [m for m in model.modules() if isinstance(m, S4)]

    def call() -> None:
        model.zero_grad(set_to_none=True)
        sum(layer.kernel(L).sum() for layer in layers).backward()

    return call


def with_textbook_layers(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` run with the textbook layer forms (the naive-implementation baseline)."""

    def run() -> None:
        with textbook_layers():
            call()

    return run


def record(benchmark, make, mode: str, L: int, kernels_too: bool) -> None:
    (call, model), (naive_call, naive_model) = make("auto"), make("naive")
    baselines = {"naive": naive_call, "naive_implementation": with_textbook_layers(naive_call)}
    with timing_allocator():
        median, base = run_benchmark_against(benchmark, call, baselines, rounds(L))
        kernels = None
        if kernels_too:
            kernels = paired_medians(kernels_call(model, L), kernels_call(naive_model, L), rounds(L))
    info = dict(device=str(DEVICE), mode=mode, L=L, trials_per_second=BATCH / median)
    for name, seconds in base.items():
        info.update({f"{name}_seconds": seconds, f"speedup_vs_{name}": seconds / median})
    if kernels is not None:
        info.update(kernel_seconds=kernels[0], naive_kernel_seconds=kernels[1],
                    ceiling_vs_naive=base["naive"] / (median - kernels[0]))
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("mode,L", CASES)
@pytest.mark.parametrize("kernels", ["recomputed", "cached"])
def test_denoiser_step(benchmark, kernels, mode, L):
    benchmark.group = f"denoiser step {kernels}"
    record(benchmark, lambda backend: denoiser_step(mode, L, backend, kernels == "cached"), mode, L,
           kernels_too=kernels == "recomputed")


@pytest.mark.parametrize("mode,L", CASES)
def test_autoencoder_step(benchmark, mode, L):
    benchmark.group = "autoencoder training step"
    record(benchmark, lambda backend: autoencoder_step(mode, L, backend), mode, L, kernels_too=True)


@pytest.mark.parametrize("L", [256, 2048])
def test_retained_heap(benchmark, L):
    benchmark.group = "autoencoder training step, heap"
    call, _ = autoencoder_step("dplr", L, "auto")
    heap = contextlib.ExitStack()
    default_heap: list[float] = []

    def setup() -> None:  # untimed: a steady step under glibc's defaults, then the retained heap, warmed
        heap.close()
        call()
        default_heap.append(timed(call))
        heap.enter_context(retained_heap())
        call()

    with timing_allocator():
        try:
            median = run_benchmark_with_setup(benchmark, call, rounds(L), setup)
        finally:
            heap.close()
    default = statistics.median(default_heap[-rounds(L):])
    benchmark.extra_info.update(device=str(DEVICE), mode="dplr", L=L, default_heap_seconds=default,
                                speedup_vs_default_heap=default / median)
