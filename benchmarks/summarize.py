"""Turn a pytest-benchmark JSON file into a markdown table of medians and same-run ratios.

``python benchmarks/summarize.py results.json > results.md``
"""
from __future__ import annotations

import json
import sys

RATIO_KEYS = (
    "speedup_vs_naive", "speedup_vs_naive_implementation", "memory_ratio", "speedup_vs_ddpm1000",
    "speedup_vs_eager", "speedup_vs_torch_eager", "speedup_vs_unfused", "speedup_vs_recompute", "ratio_to_corrcoef",
    "auto_vs_best", "ceiling_vs_naive", "speedup_vs_default_heap",
)
CHOICE_KEYS = ("auto_backend", "best_backend")


def rows(report: dict) -> list[str]:
    """One markdown row per benchmark: name, median, and every ratio present in extra_info."""
    out = ["| benchmark | median (ms) | peak (MiB) | ratios (same run) |", "|---|---|---|---|"]
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        ratios = ", ".join([f"{k}={info[k]:.2f}" for k in RATIO_KEYS if k in info]
                           + [f"{k}={info[k]}" for k in CHOICE_KEYS if k in info])
        peak = f"{info['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in info else "-"
        out.append(f"| {bench['name']} | {bench['stats']['median'] * 1e3:.2f} | {peak} | {ratios} |")
    return out


def main(path: str) -> None:
    with open(path) as f:
        report = json.load(f)
    machine = report.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} "
          f"cores; torch device per row in the JSON extra_info.\n")
    print("\n".join(rows(report)))


if __name__ == "__main__":
    main(sys.argv[1])
