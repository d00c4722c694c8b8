"""Run the whole benchmark suite on a CUDA GPU and write ``results/<device>.json`` and ``results/<device>.md``.

``python benchmarks/run_gpu.py [--out benchmarks/results] [extra pytest arguments]``

Before the suite, the same process measures two ceilings of this GPU: fp32 FLOP/s (a large matmul with
TF32 off) and memory bandwidth (a large device-to-device copy). Each benchmark with a known work count
then gets ``pct_of_roofline`` in its ``extra_info``:

- Vandermonde kernel (KERNELS.md): ``9 * rows * Np * L`` FLOP forward (tiled powers), over the fp32 ceiling;
- Cauchy kernel (KERNELS.md): ``32 * rows * Np * M`` FLOP forward (30 FLOP + 2 reciprocals per element);
  for both, ``fwd+bwd`` counts 3x the forward (the backward does about twice the forward work);
- fused denoiser-block ops (memory-bound): fwd+bwd touches ``5 * B*C*L`` (modulated norm: x, out; grad,
  x, dx) or ``6 * B*C*L`` (GELU gate: x, y, out; grad, y, dy) fp32 values, over the bandwidth ceiling.

The markdown table is ``summarize.py``'s (medians and same-run ratios) plus the roofline column. Needs a
CUDA device: without one it exits with status 2 and says so (CI never runs it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from summarize import rows  # noqa: E402

FP32 = 4  # bytes


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _best_seconds(fn, repeats: int, arg: torch.Tensor) -> float:
    """Fastest of ``repeats`` synchronised calls ``fn(arg)`` after one warm-up call."""
    fn(arg)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_ceilings(n: int = 8192, copy_bytes: int = 2**30, repeats: int = 10) -> dict[str, float]:
    """fp32 FLOP/s of an ``n x n`` matmul (TF32 off) and bytes/s of a ``copy_bytes`` device copy (read + write)."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        matmul_s = _best_seconds(torch.randn(n, n, device="cuda").matmul, repeats, torch.randn(n, n, device="cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    src = torch.empty(copy_bytes // FP32, device="cuda")
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
    lines = [
        f"# Benchmarks on {device}",
        "",
        f"Ceilings measured in this run: fp32 {c['fp32_flops'] / 1e12:.1f} TFLOP/s ({c['matmul_n']}^3 matmul, "
        f"TF32 off), copy bandwidth {c['bytes_per_second'] / 1e9:.0f} GB/s. Ratios are against baselines "
        f"measured in the same run; work models for %-of-roofline in `benchmarks/run_gpu.py`.",
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
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for <device>.json and .md")
    args, pytest_args = parser.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("run_gpu.py needs a CUDA GPU and found none (torch.cuda.is_available() is False); "
              "for CPU figures run `pytest benchmarks/ --benchmark-only` instead.", file=sys.stderr)
        return 2
    import pytest

    device = torch.cuda.get_device_name()
    slug = device_slug(device)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{slug}.json"
    ceilings = measure_ceilings()
    status = pytest.main([str(HERE), "--benchmark-only", f"--benchmark-json={json_path}", *pytest_args])
    if not json_path.exists():
        print(f"pytest wrote no {json_path} (exit status {int(status)})", file=sys.stderr)
        return int(status) or 1
    report = json.loads(json_path.read_text())
    annotate(report, ceilings)
    json_path.write_text(json.dumps(report, indent=2))
    (args.out / f"{slug}.md").write_text(markdown(report, device))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    return int(status)


if __name__ == "__main__":
    raise SystemExit(main())
