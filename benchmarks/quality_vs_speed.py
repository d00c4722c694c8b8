"""Quality-vs-speed study: DDPM-1000 against ancestral DDPM (DDIM eta=1), DDIM (eta=0) and DPM-Solver++ at
10/20/50 steps on a trained run.

    python benchmarks/quality_vs_speed.py runs/lorenz --out benchmarks/results/quality_vs_speed_lorenz_cpu

Each sampler generates as many trials as the real test split holds (same lengths, same seed); the paper's
metrics (bootstrap mean over 5 resamples) compare them with the test split. A real-vs-real row (train
split against test split) gives the floor. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ldns_fast.metrics import METRIC_LABELS, compare
from ldns_fast.pipeline import LDNS
from ldns_fast.training.stages import load_data

CONFIGS = [("ddpm", 1000), ("ddpm", 10), ("ddpm", 20), ("ddpm", 50), ("ddim", 10), ("ddim", 20), ("ddim", 50),
           ("dpm++", 10), ("dpm++", 20), ("dpm++", 50)]
COLUMNS = ["kl_population_count", "rmse_correlation", "rmse_mean_isi", "rmse_std_isi", "pearson_mean_isi",
           "pearson_std_isi", "pearson_correlation", "pearson_population_density"]


def run(run_dir: Path, seed: int, device: str) -> dict:
    model = LDNS.load(run_dir, device)
    data = load_data(model.config)
    test, train = data.split("test"), data.split("train")
    floor = compare(test.spikes, train.spikes, data.bin_width, 5, seed,
                    real_lengths=test.lengths, generated_lengths=train.lengths)
    rows = {"real (train vs test)": {"seconds": None, "metrics": floor}}
    for name, steps in CONFIGS:
        started = time.perf_counter()
        out = model.sample(test.n_trials, lengths=torch.as_tensor(test.lengths), sampler=name, steps=steps, seed=seed)
        seconds = time.perf_counter() - started
        generated = out.to_spike_data(data.bin_width)
        metrics = compare(test.spikes, generated.spikes, data.bin_width, 5, seed,
                          real_lengths=test.lengths, generated_lengths=generated.lengths)
        rows[f"{name}-{steps}"] = {"seconds": seconds, "metrics": metrics}
        print(f"{name}-{steps}: {seconds:.1f} s", file=sys.stderr)
    return {"run": str(run_dir), "n_trials": test.n_trials, "seed": seed, "device": device,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "command": " ".join(sys.argv), "rows": rows}


def markdown(result: dict) -> str:
    head = "| sampler | time (s) | speedup vs DDPM-1000 | " + " | ".join(METRIC_LABELS[c] for c in COLUMNS) + " |"
    lines = [f"Command: `{result['command']}` ({result['n_trials']} test trials, seed {result['seed']}, "
             f"{result['device']}, {result['torch_threads']} threads)", "", head,
             "|" + "---|" * (len(COLUMNS) + 3)]
    ddpm = result["rows"]["ddpm-1000"]["seconds"]
    for name, row in result["rows"].items():
        seconds = row["seconds"]
        timing = "-" if seconds is None else f"{seconds:.1f}"
        speedup = "-" if seconds is None else f"{ddpm / seconds:.1f}x"
        values = " | ".join(f"{row['metrics'][c]['mean']:.4g}" for c in COLUMNS)
        lines.append(f"| {name} | {timing} | {speedup} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = run(args.run, args.seed, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
