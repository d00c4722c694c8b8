"""ONNX sampling throughput: onnxruntime (direct and FFT graphs) vs torch eager vs torch.compile.

Whole DDIM-20 samples (latents, rates and Poisson spikes) of the default (``cpu`` preset) Lorenz model
with random weights, for short trials (64 x 140 bins), medium ones (8 x 512, near the direct/FFT
crossover that ``conv="auto"`` uses) and one long recording (16,384 bins).
``speedup_vs_torch_eager`` in ``extra_info`` is against torch eager (``LDNS.sample``) in the same run
(torch-compile: ``LDNS.sample(compile=True)``);
the direct graph is skipped for the long recording (its Toeplitz product is quadratic in length).
"""
from __future__ import annotations

import pytest
import torch
from benchmarks.common import DEVICE, median_seconds, run_benchmark
from benchmarks.memory import timing_allocator

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ldns_fast.config import merge, preset  # noqa: E402
from ldns_fast.export import OnnxSampler, export_onnx  # noqa: E402
from ldns_fast.models import Autoencoder, Denoiser  # noqa: E402
from ldns_fast.pipeline import LDNS  # noqa: E402

STEPS = 20
CASES = {"short": (64, 140), "medium": (8, 512), "long": (1, 16384)}
RUN = merge(preset("cpu"), {"autoencoder": {"n_neurons": 128}})


def model() -> LDNS:
    torch.manual_seed(0)
    denoiser = Denoiser(RUN.denoiser)
    with torch.no_grad():  # leave the adaLN-Zero identity so every block does real work
        for block in denoiser.blocks:
            block.modulation.weight.normal_(0, 0.02)
    c = RUN.denoiser.latent
    return LDNS(RUN, Autoencoder(RUN.autoencoder), denoiser, torch.zeros(c), torch.ones(c), 0.005, 140)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, OnnxSampler]:
    ldns = model()
    samplers = {}
    for conv in ("direct", "fft"):
        out = tmp_path_factory.mktemp(f"onnx-{conv}")
        export_onnx(ldns, out, sampler="ddim", steps=STEPS, conv=conv)
        samplers[conv] = OnnxSampler(out / "sampler.onnx")
    return samplers


@pytest.fixture(scope="module", autouse=True)
def heap_allocator():
    """Time with glibc's usual heap, not the mmap-per-tensor set-up of the memory figures."""
    with timing_allocator():
        yield


def torch_call(n: int, length: int, compiled: bool):
    ldns = model()
    return lambda: ldns.sample(n, length=length, sampler="ddim", steps=STEPS, seed=0, batch_size=n, compile=compiled)


@pytest.fixture(scope="module")
def eager_seconds() -> dict[str, float]:
    return {case: median_seconds(torch_call(n, L, False), rounds=1 if case == "long" else 3)
            for case, (n, L) in CASES.items()}


@pytest.mark.parametrize("runtime", ["torch-eager", "torch-compile", "onnx-direct", "onnx-fft"])
@pytest.mark.parametrize("case", list(CASES))
def test_sampling_throughput(benchmark, exported, eager_seconds, case: str, runtime: str) -> None:
    n, length = CASES[case]
    if case == "long" and runtime == "onnx-direct":
        pytest.skip("the direct Toeplitz graph is quadratic in length; long recordings use the FFT graph")
    if runtime.startswith("onnx"):
        sampler = exported[runtime.split("-")[1]]
        call = lambda: sampler.sample(n, length=length, seed=0, max_bins=n * max(length, 256))  # noqa: E731
    else:
        call = torch_call(n, length, compiled=runtime == "torch-compile")
    benchmark.group = f"DDIM-{STEPS} sample, {n} x {length} bins ({DEVICE})"
    median = run_benchmark(benchmark, call, rounds=1 if case == "long" else 3)
    benchmark.extra_info.update(
        device=str(DEVICE), runtime=runtime, trials=n, bins=length, torch_eager_seconds=eager_seconds[case],
        speedup_vs_torch_eager=eager_seconds[case] / median, samples_per_second=n / median,
    )
