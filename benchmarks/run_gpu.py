"""The GPU benchmark plan: ceilings, then the kernel benchmarks; writes ``<device>.json`` and ``<device>.md``.

``python benchmarks/run_gpu.py [--out benchmarks/results] [--dry-run] [extra pytest arguments]``
(or ``python -m benchmarks.run_gpu ...`` from the repository root)

The plan, sized to finish within 8 minutes on one H100/H200-class GPU:

1. measure two ceilings of this GPU: fp32 FLOP/s (an ``8192^3`` matmul with TF32 off) and memory
   bandwidth (a 1 GiB device-to-device copy);
2. run the kernel benchmarks (``test_kernels_bench.py``: Vandermonde and Cauchy on every backend at the
   LDNS shapes against the naive formula; ``test_fused_bench.py``: the fused denoiser-block ops against
   the unfused module ops), each with its same-run baseline;
3. give each benchmark with a known work count ``pct_of_roofline`` in its ``extra_info``:

   - Vandermonde kernel (KERNELS.md): ``9 * rows * Np * L`` FLOP forward (tiled powers), over the fp32 ceiling;
   - Cauchy kernel (KERNELS.md): ``32 * rows * Np * M`` FLOP forward (30 FLOP + 2 reciprocals per element);
     for both, ``fwd+bwd`` counts 3x the forward (the backward does about twice the forward work);
   - fused denoiser-block ops (memory-bound): fwd+bwd touches ``5 * B*C*L`` (modulated norm: x, out; grad,
     x, dx) or ``6 * B*C*L`` (GELU gate: x, y, out; grad, y, dy) fp32 values, over the bandwidth ceiling.

The JSON is pytest-benchmark's plus the ceilings and the seconds each step took; the markdown table is
``summarize.py``'s (medians and same-run ratios) plus the roofline column. The other benchmark files
(sampling, pipeline, ONNX, metrics) run with plain ``pytest benchmarks/<file> --benchmark-only``.

``--dry-run`` runs the same plan on CPU at toy sizes (ceilings from a ``256^3`` matmul and a 1 MiB copy,
only the first case of each benchmark) into a temporary folder unless ``--out`` is given: CI runs it to
prove the script works end to end. Without ``--dry-run`` and without a CUDA device it exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from ldns_fast.atomic import atomic_write

if __package__:  # python -m benchmarks.run_gpu
    from .summarize import rows
else:  # python benchmarks/run_gpu.py: Python puts this folder first on sys.path
    from summarize import rows

HERE = Path(__file__).resolve().parent

FP32 = 4  # bytes
PLAN = ("test_kernels_bench.py", "test_fused_bench.py")
GPU_CEILINGS = {"n": 8192, "copy_bytes": 2**30, "repeats": 10}
TOY_CEILINGS = {"n": 256, "copy_bytes": 2**20, "repeats": 2}


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, repeats: int, arg: torch.Tensor) -> float:
    """Fastest of ``repeats`` synchronised calls ``fn(arg)`` after one warm-up call."""
    fn(arg)
    _sync(arg.device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        _sync(arg.device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_ceilings(device: torch.device, n: int, copy_bytes: int, repeats: int) -> dict[str, float]:
    """fp32 FLOP/s of an ``n x n`` matmul (TF32 off) and bytes/s of a ``copy_bytes`` device copy (read + write)."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        matmul_s = _best_seconds(torch.randn(n, n, device=device).matmul, repeats, torch.randn(n, n, device=device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    src = torch.empty(copy_bytes // FP32, device=device)
    copy_s = _best_seconds(torch.empty_like(src).copy_, repeats, src)
    return {"fp32_flops": 2 * n**3 / matmul_s, "bytes_per_second": 2 * copy_bytes / copy_s,
            "matmul_n": n, "copy_bytes": copy_bytes}


def roofline(name: str, info: dict, median: float, ceilings: dict[str, float]) -> tuple[float, str] | None:
    """``(percent of the ceiling, what was counted)`` for benchmarks with a work model, else None."""
    passes = 3 if info.get("mode") == "fwd+bwd" else 1
    if name.startswith("test_vandermonde"):
        flop = 9 * info["elements"] * passes
        return 100 * flop / median / ceilings["fp32_flops"], f"{flop:.3g} FLOP / fp32 peak"
    if name.startswith("test_cauchy"):
        flop = 32 * info["elements"] * passes
        return 100 * flop / median / ceilings["fp32_flops"], f"{flop:.3g} FLOP / fp32 peak"
    values = {"test_modulated_norm": 5, "test_gelu_gate_residual": 6}.get(name.split("[")[0])
    if values is not None and info.get("mode") == "fwd+bwd":
        nbytes = values * info["B"] * info["C"] * info["L"] * FP32
        return 100 * nbytes / median / ceilings["bytes_per_second"], f"{nbytes:.3g} B / copy bandwidth"
    return None


def annotate(report: dict, ceilings: dict[str, float]) -> None:
    """Add the ceilings to ``report`` and ``pct_of_roofline`` / ``roofline_work`` to each benchmark."""
    report["ceilings"] = ceilings
    for bench in report["benchmarks"]:
        found = roofline(bench["name"], bench["extra_info"], bench["stats"]["median"], ceilings)
        if found is not None:
            bench["extra_info"]["pct_of_roofline"], bench["extra_info"]["roofline_work"] = found


def markdown(report: dict, device: str) -> str:
    c = report["ceilings"]
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["plan_seconds"].items())
    lines = [
        f"# Benchmarks on {device}",
        "",
        f"Ceilings measured in this run: fp32 {c['fp32_flops'] / 1e12:.1f} TFLOP/s ({c['matmul_n']}^3 matmul, "
        f"TF32 off), copy bandwidth {c['bytes_per_second'] / 1e9:.0f} GB/s. Ratios are against baselines "
        f"measured in the same run; work models for %-of-roofline in `benchmarks/run_gpu.py`. Plan: {steps}.",
        "",
    ]
    table = rows(report)
    table[0] += " % of roofline |"
    table[1] += "---|"
    for i, bench in enumerate(report["benchmarks"], start=2):
        pct = bench["extra_info"].get("pct_of_roofline")
        table[i] += f" {pct:.1f} |" if pct is not None else " - |"
    return "\n".join(lines + table) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for <device>.json and .md (default: benchmarks/results, "
                        "or a new temporary folder with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="the whole plan on CPU at toy sizes")
    args, pytest_args = parser.parse_known_args(argv)
    if args.dry_run:
        device, name, ceiling_sizes = torch.device("cpu"), "cpu dry run", TOY_CEILINGS
        out = args.out or Path(tempfile.mkdtemp(prefix="run_gpu_dry_run_"))
        pytest_args = ["--toy", *pytest_args]
    elif torch.cuda.is_available():
        device, ceiling_sizes = torch.device("cuda"), GPU_CEILINGS
        name, out = torch.cuda.get_device_name(), args.out or HERE / "results"
    else:
        print("run_gpu.py needs a CUDA GPU and found none (torch.cuda.is_available() is False); "
              "--dry-run runs the plan on CPU at toy sizes.", file=sys.stderr)
        return 2
    import pytest

    slug = device_slug(name)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{slug}.json"
    start = time.perf_counter()
    ceilings = measure_ceilings(device, **ceiling_sizes)
    plan_seconds = {"ceilings": time.perf_counter() - start}
    start = time.perf_counter()
    status = pytest.main([*(str(HERE / f) for f in PLAN), "--benchmark-only", f"--benchmark-json={json_path}",
                          "-p", "no:cacheprovider", *pytest_args])
    plan_seconds["benchmarks"] = time.perf_counter() - start
    if not json_path.exists():
        print(f"pytest wrote no {json_path} (exit status {int(status)})", file=sys.stderr)
        return int(status) or 1
    report = json.loads(json_path.read_text())
    annotate(report, ceilings)
    report["plan_seconds"] = plan_seconds
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    atomic_write(out / f"{slug}.md", lambda tmp: Path(tmp).write_text(markdown(report, name)))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    return int(status)


if __name__ == "__main__":
    raise SystemExit(main())
