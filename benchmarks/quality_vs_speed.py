"""Quality-vs-speed study: DDPM-1000 against ancestral DDPM (DDIM eta=1), DDIM (eta=0), DPM-Solver++(2M) and
its SDE variant at 10/20/50 steps on a trained run.

    python benchmarks/quality_vs_speed.py runs/lorenz --out benchmarks/results/quality_vs_speed_lorenz_cpu
        [--reference test|train] [--samplers ddpm-1000,dpm++-20,dpm++-20:trailing] [--seeds 0,1,2] [--device cpu]

A sampler is ``NAME-STEPS``, with its default timestep spacing, or ``NAME-STEPS:SPACING``.

Each sampler generates as many trials as the reference split holds (same lengths, each seed) and the
paper's metrics compare them with that split: ``test`` (held out, the default) or ``train`` (the paper's
Lorenz protocol: as many samples as training trials). Two more rows bound what a sampler can reach: real
against real (the other split against the reference: the sampling-noise floor) and the autoencoder's
reconstructions of the reference trials (the run's ceiling). Values are on the full sets (``point``),
with the standard deviation over 5 bootstrap resamples, or with several ``--seeds`` their mean and
standard deviation over seeds. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ldns_fast.data import SpikeData
from ldns_fast.diffusion import SAMPLERS, SPACINGS
from ldns_fast.metrics import METRIC_LABELS, compare
from ldns_fast.pipeline import LDNS
from ldns_fast.run import load_data

CONFIGS = ["ddpm-1000", "ddpm-10", "ddpm-20", "ddpm-50", "ddim-10", "ddim-20", "ddim-50",
           "dpm++-10", "dpm++-20", "dpm++-50", "sde-dpm++-10", "sde-dpm++-20", "sde-dpm++-50"]
COLUMNS = ["kl_population_count", "rmse_correlation", "rmse_mean_isi", "rmse_std_isi", "pearson_mean_isi",
           "pearson_std_isi", "pearson_correlation", "pearson_population_density"]
N_BOOTSTRAP = 5


def parse_sampler(spec: str) -> tuple[str, int, dict[str, str]]:
    """``"dpm++-20"`` -> ``("dpm++", 20, {})``; ``"dpm++-20:trailing"`` -> ``("dpm++", 20, {"spacing": "trailing"})``."""
    head, _, spacing = spec.partition(":")
    name, _, steps = head.rpartition("-")
    if name not in SAMPLERS or not steps.isdigit() or (spacing and spacing not in SPACINGS):
        raise argparse.ArgumentTypeError(f"sampler must be NAME-STEPS or NAME-STEPS:SPACING with NAME in "
                                         f"{sorted(SAMPLERS)} and SPACING in {SPACINGS}, got {spec!r}")
    return name, int(steps), {"spacing": spacing} if spacing else {}


def run(run_dir: Path, samplers: list[str], reference: str, seeds: list[int], device: str) -> dict:
    model = LDNS.load(run_dir, device)
    data = load_data(model.config)
    other = "train" if reference == "test" else "test"
    real, floor_set = data.split(reference), data.split(other)

    def against_real(generated: SpikeData, seed: int) -> dict:
        return compare(real.spikes, generated.spikes, data.bin_width, N_BOOTSTRAP, seed,
                       real_lengths=real.lengths, generated_lengths=generated.lengths)

    rows = {f"real ({other} vs {reference})": {"seconds": [], "metrics": [against_real(floor_set, seeds[0])]}}
    rows["autoencoder reconstruction"] = {"seconds": [], "metrics": [
        against_real(model.reconstruct(real, seed=seed).to_spike_data(data.bin_width), seed) for seed in seeds]}
    for spec in samplers:
        name, steps, kwargs = parse_sampler(spec)
        rows[spec] = {"seconds": [], "metrics": []}
        for seed in seeds:
            started = time.perf_counter()
            out = model.sample(real.n_trials, lengths=torch.as_tensor(real.lengths), sampler=name, steps=steps,
                               seed=seed, **kwargs)
            rows[spec]["seconds"].append(time.perf_counter() - started)
            rows[spec]["metrics"].append(against_real(out.to_spike_data(data.bin_width), seed))
            print(f"{spec} seed {seed}: {rows[spec]['seconds'][-1]:.1f} s", file=sys.stderr)
    return {"run": str(run_dir), "reference": reference, "n_trials": real.n_trials, "seeds": seeds,
            "n_bootstrap": N_BOOTSTRAP, "device": device, "torch_threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv), "rows": rows}


def summary(runs: list[dict], metric: str) -> tuple[float, float]:
    """One seed: the full-set value and its bootstrap std; several: mean and std (ddof 1) over seeds."""
    if len(runs) == 1:
        return runs[0][metric]["point"], runs[0][metric]["std"]
    values = np.array([r[metric]["point"] for r in runs])
    return float(values.mean()), float(values.std(ddof=1))


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    spread = (f"seed {seeds[0]}, ± std over {result['n_bootstrap']} bootstrap resamples" if len(seeds) == 1 else
              f"mean ± std over seeds {seeds} (the real-vs-real row: one value ± bootstrap std)")
    head = "| sampler | time (s) | speedup vs DDPM-1000 | " + " | ".join(METRIC_LABELS[c] for c in COLUMNS) + " |"
    lines = [f"Command: `{result['command']}` ({result['n_trials']} {result['reference']} trials and as many "
             f"generated, {result['device']}, {result['torch_threads']} threads). Values on the full sets, "
             f"{spread}.", "", head, "|" + "---|" * (len(COLUMNS) + 3)]
    ddpm = result["rows"].get("ddpm-1000", {}).get("seconds")
    for name, row in result["rows"].items():
        seconds = float(np.mean(row["seconds"])) if row["seconds"] else None
        timing = "-" if seconds is None else f"{seconds:.1f}"
        speedup = "-" if seconds is None or not ddpm else f"{np.mean(ddpm) / seconds:.1f}x"
        values = " | ".join("{:.4g} ± {:.1g}".format(*summary(row["metrics"], c)) for c in COLUMNS)
        lines.append(f"| {name} | {timing} | {speedup} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--reference", default="test", choices=["test", "train"], help="real split compared with")
    parser.add_argument("--samplers", default=",".join(CONFIGS),
                        help="comma-separated NAME-STEPS[:SPACING] list (default: all of the study)")
    parser.add_argument("--seeds", default="0", help="comma-separated sampling seeds (default 0)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    for spec in samplers:
        try:
            parse_sampler(spec)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    result = run(args.run, samplers, args.reference, seeds, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
