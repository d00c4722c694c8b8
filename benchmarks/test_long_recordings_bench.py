"""Long recordings: the chunked-scan S4 convolution against FFT and direct ones, in torch and onnxruntime.

Whole DDIM-20 samples (latents, rates and Poisson spikes) of the default (``cpu`` preset) Lorenz model with
random weights (:func:`benchmarks.test_onnx_bench.model`): 64 x 140 bins, 8 x 2,048, 1 x 16,384 and one
180,000-bin recording (15 min at 5 ms; marked ``slow``). Runtimes: torch eager with FFT convolutions (the baseline:
``speedup_vs_torch_eager`` in ``extra_info``), torch with the chunked scan (``LDNS.sample`` with every S4
layer's ``conv`` set), and ``OnnxSampler`` on the direct graph (where its ``L x L`` Toeplitz matrices fit the
bin budget), the FFT graph and the chunked graph. The 180,000-bin ONNX rows go through
``OnnxSampler.sample_to_hdf5``; ``process_peak_rss_bytes`` there is the peak resident set of a fresh process
(onnxruntime, numpy and h5py only) making the same file. Elsewhere ``peak_bytes`` is the memory a first call
adds to this process (:func:`benchmarks.memory.peak_memory_bytes`), and ``bins_per_second`` the throughput.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks.common import DEVICE, median_seconds, run_benchmark
from benchmarks.memory import peak_memory_bytes, timing_allocator

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from benchmarks.test_onnx_bench import STEPS, model  # noqa: E402

from ldns_fast.export import OnnxSampler, export_onnx  # noqa: E402
from ldns_fast.export.runtime import DEFAULT_MAX_BINS  # noqa: E402
from ldns_fast.pipeline import LDNS  # noqa: E402
from ldns_fast.ssm import S4  # noqa: E402

CASES = {"short": (64, 140), "medium": (8, 2048), "long": (1, 16384), "recording": (1, 180_000)}
RUNTIMES = ["torch-eager", "torch-chunked", "onnx-direct", "onnx-fft", "onnx-chunked"]
ROUNDS = {"short": 3, "medium": 3, "long": 1, "recording": 1}


def torch_model(conv: str) -> LDNS:
    """The benchmark model with every S4 layer set to ``conv``."""
    ldns = model()
    for module in ldns.denoiser.modules():
        if isinstance(module, S4):
            module.conv = conv
    return ldns


def torch_call(conv: str, n: int, length: int):
    ldns = torch_model(conv)
    return lambda: ldns.sample(n, length=length, sampler="ddim", steps=STEPS, seed=0, batch_size=n, max_bins=n * length)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Callable[[str], Path]:
    """``sampler.onnx`` of the benchmark model for a convolution mode, exported on first use."""
    paths: dict[str, Path] = {}

    def path(conv: str) -> Path:
        if conv not in paths:
            out = tmp_path_factory.mktemp(f"onnx-{conv}")
            export_onnx(model(), out, sampler="ddim", steps=STEPS, conv=conv)
            paths[conv] = out / "sampler.onnx"
        return paths[conv]

    return path


@pytest.fixture(scope="module")
def eager_seconds() -> dict[str, float]:
    """Torch eager (FFT) medians by case, filled by the torch-eager rows (run first) or measured on demand."""
    return {}


def eager_baseline(eager: dict[str, float], case: str) -> float:
    if case not in eager:
        n, length = CASES[case]
        with timing_allocator():
            eager[case] = median_seconds(torch_call("fft", n, length), ROUNDS[case])
    return eager[case]


def fresh_process_peak_rss(path: Path, length: int, out: Path) -> int:
    """Peak resident set (bytes) of a new process writing one ``length``-bin trial with ``OnnxSampler``."""
    script = f"""
import resource, sys
from ldns_fast.export import OnnxSampler
OnnxSampler({str(path)!r}).sample_to_hdf5({str(out)!r}, lengths=[{length}], seed=0, overwrite=True)
assert "torch" not in sys.modules
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


CASE_PARAMS = [pytest.param(case, marks=pytest.mark.slow) if case == "recording" else case for case in CASES]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_long_recording_throughput(benchmark, exported, eager_seconds, tmp_path: Path, case: str, runtime: str) -> None:
    n, length = CASES[case]
    info: dict[str, object] = {}
    if runtime.startswith("torch"):
        call = torch_call("fft" if runtime == "torch-eager" else "chunked", n, length)
    else:
        conv = runtime.split("-")[1]
        budget = n * length
        if conv == "direct":  # its L x L Toeplitz matrices must fit OnnxSampler's default bin budget
            if length * length > DEFAULT_MAX_BINS:
                pytest.skip(f"a {length}-bin trial's L x L Toeplitz matrices exceed the default bin budget "
                            f"({DEFAULT_MAX_BINS})")
            budget = max(budget, length * length)
        if conv == "fft" and case == "recording":
            pytest.skip("the FFT graph needs over 5 minutes here (onnxruntime's CPU DFT: see the 16,384-bin row)")
        sampler = OnnxSampler(exported(conv))
        if case == "recording":
            h5 = tmp_path / "recording.h5"
            call = lambda: sampler.sample_to_hdf5(h5, lengths=[length], seed=0, max_bins=budget, overwrite=True)  # noqa: E731
            info["process_peak_rss_bytes"] = fresh_process_peak_rss(exported(conv), length, tmp_path / "fresh.h5")
        else:
            call = lambda: sampler.sample(n, length=length, seed=0, max_bins=budget)  # noqa: E731
    peak = peak_memory_bytes(call, DEVICE)  # the first call (measuring allocator): caches and arenas included
    with timing_allocator():
        median = run_benchmark(benchmark, call, rounds=ROUNDS[case])
    if runtime == "torch-eager":
        eager_seconds[case] = median
    base = eager_baseline(eager_seconds, case)
    benchmark.group = f"DDIM-{STEPS} sample, {n} x {length} bins ({DEVICE})"
    benchmark.extra_info.update(
        device=str(DEVICE), runtime=runtime, trials=n, bins=length, torch_eager_seconds=base,
        speedup_vs_torch_eager=base / median, bins_per_second=n * length / median, peak_bytes=peak, **info,
    )
