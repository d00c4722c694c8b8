"""Quality-vs-speed study: DDPM-1000 against ancestral DDPM (DDIM eta=1), DDIM (eta=0), DPM-Solver++(2M) and
its SDE variant at 10/20/50 steps on a trained run.

    python benchmarks/quality_vs_speed.py runs/lorenz --out benchmarks/results/quality_vs_speed_lorenz_cpu
        [--reference test|train] [--samplers ddpm-1000,dpm++-20] [--seed 0] [--device cpu]

Each sampler generates as many trials as the reference split holds (same lengths, same seed) and the
paper's metrics compare them with that split: ``test`` (held out, the default) or ``train`` (the paper's
Lorenz protocol: as many samples as training trials). Two more rows bound what a sampler can reach: real
against real (the other split against the reference: the sampling-noise floor) and the autoencoder's
reconstructions of the reference trials (the run's ceiling). Values are on the full sets (``point``),
with the standard deviation over 5 bootstrap resamples. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ldns_fast.diffusion import SAMPLERS
from ldns_fast.metrics import METRIC_LABELS, compare
from ldns_fast.pipeline import LDNS
from ldns_fast.training.stages import load_data

CONFIGS = ["ddpm-1000", "ddpm-10", "ddpm-20", "ddpm-50", "ddim-10", "ddim-20", "ddim-50",
           "dpm++-10", "dpm++-20", "dpm++-50", "sde-dpm++-10", "sde-dpm++-20", "sde-dpm++-50"]
COLUMNS = ["kl_population_count", "rmse_correlation", "rmse_mean_isi", "rmse_std_isi", "pearson_mean_isi",
           "pearson_std_isi", "pearson_correlation", "pearson_population_density"]
N_BOOTSTRAP = 5


def parse_sampler(spec: str) -> tuple[str, int]:
    """``"dpm++-20"`` -> ``("dpm++", 20)``."""
    name, _, steps = spec.rpartition("-")
    if name not in SAMPLERS or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"sampler must be NAME-STEPS with NAME in {sorted(SAMPLERS)}, got {spec!r}")
    return name, int(steps)


def run(run_dir: Path, samplers: list[str], reference: str, seed: int, device: str) -> dict:
    model = LDNS.load(run_dir, device)
    data = load_data(model.config)
    other = "train" if reference == "test" else "test"
    real, floor_set = data.split(reference), data.split(other)

    def against_real(generated_spikes, generated_lengths) -> dict:
        return compare(real.spikes, generated_spikes, data.bin_width, N_BOOTSTRAP, seed,
                       real_lengths=real.lengths, generated_lengths=generated_lengths)

    rows = {f"real ({other} vs {reference})": {"seconds": None,
                                               "metrics": against_real(floor_set.spikes, floor_set.lengths)}}
    recon = model.reconstruct(real, seed=seed).to_spike_data(data.bin_width)
    rows["autoencoder reconstruction"] = {"seconds": None, "metrics": against_real(recon.spikes, recon.lengths)}
    for spec in samplers:
        name, steps = parse_sampler(spec)
        started = time.perf_counter()
        out = model.sample(real.n_trials, lengths=torch.as_tensor(real.lengths), sampler=name, steps=steps, seed=seed)
        seconds = time.perf_counter() - started
        generated = out.to_spike_data(data.bin_width)
        rows[spec] = {"seconds": seconds, "metrics": against_real(generated.spikes, generated.lengths)}
        print(f"{spec}: {seconds:.1f} s", file=sys.stderr)
    return {"run": str(run_dir), "reference": reference, "n_trials": real.n_trials, "seed": seed,
            "n_bootstrap": N_BOOTSTRAP, "device": device, "torch_threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv), "rows": rows}


def markdown(result: dict) -> str:
    head = "| sampler | time (s) | speedup vs DDPM-1000 | " + " | ".join(METRIC_LABELS[c] for c in COLUMNS) + " |"
    lines = [f"Command: `{result['command']}` ({result['n_trials']} {result['reference']} trials and as many "
             f"generated, seed {result['seed']}, {result['device']}, {result['torch_threads']} threads). Values on "
             f"the full sets ± std over {result['n_bootstrap']} bootstrap resamples.", "", head,
             "|" + "---|" * (len(COLUMNS) + 3)]
    ddpm = result["rows"].get("ddpm-1000", {}).get("seconds")
    for name, row in result["rows"].items():
        seconds = row["seconds"]
        timing = "-" if seconds is None else f"{seconds:.1f}"
        speedup = "-" if seconds is None or ddpm is None else f"{ddpm / seconds:.1f}x"
        values = " | ".join(f"{row['metrics'][c]['point']:.4g} ± {row['metrics'][c]['std']:.1g}" for c in COLUMNS)
        lines.append(f"| {name} | {timing} | {speedup} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--reference", default="test", choices=["test", "train"], help="real split compared with")
    parser.add_argument("--samplers", default=",".join(CONFIGS),
                        help="comma-separated NAME-STEPS list (default: all of the study)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    for spec in samplers:
        try:
            parse_sampler(spec)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    result = run(args.run, samplers, args.reference, args.seed, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
