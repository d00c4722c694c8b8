"""Realism study: how close are reconstructed and generated trials to real ones, and where is fidelity lost?

    python -m ldns_fast.data.network network.h5
    python -m ldns_fast.train --data network.h5 --set denoiser.cond_drop=0.1 --spike-history --out runs/network
    python benchmarks/realism_study.py runs/network network.h5 --out benchmarks/results/realism_network_cpu
        [--reference train|test] [--sampler sde-dpm++ --steps 20] [--scales 1 2] [--seed 0] [--with-behavior]
        [--bootstrap 5] [--device cpu] [--train-command "python -m ldns_fast.train ..." (repeatable)]

Rows, each compared with the reference split (``train`` by default, ``--reference test`` for held-out
trials): the other real split (the sampling-noise floor), Poisson draws from the autoencoder's
reconstructed rates of the reference trials (the run's ceiling), trials generated for the reference
trials' conditions and lengths at each guidance scale, and, when the run holds a spike-history model,
reconstructions and generated trials (guidance 1) whose spikes it draws. Generated trials get the vector
conditions only (``--with-behavior`` adds the behaviour channels the model takes), so the direction must
come from the condition. Columns: a ridge direction decoder fitted on the real training trials (mean
angular error; the floor row decodes the real test trials) when the conditions are 2-d directions, and
:func:`ldns_fast.metrics.compare` on the full sets (``point``, with the bootstrap std). The autoencoder
quality report (:func:`ldns_fast.quality.autoencoder_report`, held-out val split) and the realism targets
(thresholds on decoder error, Pearson r of ISI statistics and correlations, bits/spike; :func:`targets`),
marked met or not met, come with it. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ldns_fast.atomic import atomic_write, write_json
from ldns_fast.config import preset, to_dict
from ldns_fast.data import SpikeData, read_dataset, valid_mask
from ldns_fast.decoding import DirectionDecoder, circular_error_degrees
from ldns_fast.diffusion import SAMPLERS
from ldns_fast.metrics import METRIC_LABELS, compare
from ldns_fast.pipeline import LDNS, Samples
from ldns_fast.quality import autoencoder_report, is_direction, mean_rates

COLUMNS = ["pearson_mean_isi", "pearson_std_isi", "pearson_correlation", "kl_population_count",
           "rmse_correlation", "rmse_mean_rate"]
DECODER = "decoder_error_deg"
N_CHANCE_PERMUTATIONS = 20
RECONSTRUCTION = "autoencoder reconstruction"
# settings the training CLI fills in from the data: not part of a recipe
_DERIVED = {"data.source", "autoencoder.n_neurons", "denoiser.latent", "denoiser.cond_dim",
            "denoiser.behavior_channels"}


def generated_row(sampler: str, steps: int, scale: float, spike_history: bool = False) -> str:
    """Row name of trials generated with ``sampler``-``steps`` at guidance ``scale``."""
    return f"generated ({sampler}-{steps}, guidance {scale:g})" + (" + spike history" if spike_history else "")


def _directions(data: SpikeData) -> np.ndarray:
    """Directions (radians) ``[n]`` of ``[cos, sin]`` conditions ``[n, 2]``."""
    return np.arctan2(data.conditions[:, 1], data.conditions[:, 0])


def _counts(samples: Samples) -> np.ndarray:
    """Spikes of :class:`Samples` ``[n, N, T]`` in file layout ``[n, T, N]``."""
    return samples.spikes.transpose(1, 2).numpy()


def _with_history(model: LDNS, rates: torch.Tensor, lengths: torch.Tensor, seed: int) -> np.ndarray:
    """Counts ``[n, T, N]`` drawn by the run's spike-history model from ``rates [n, N, T]`` (as ``LDNS.sample``
    does: rates clamped to 1e-6, a generator seeded with ``seed``)."""
    generator = torch.Generator(model.device).manual_seed(seed)
    mask = valid_mask(lengths, rates.shape[2]).to(model.device)
    spikes = model.spike_history.sample(rates.to(model.device).clamp_min(1e-6), generator, mask)
    return spikes.transpose(1, 2).cpu().numpy()


def _changed_settings(model: LDNS) -> list[str]:
    """``key=value`` of every setting of the run that differs from the ``cpu`` preset (data-derived ones skipped)."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else
                       {f"{prefix}{key}": value})
        return out

    run, base = flat(to_dict(model.config)), flat(to_dict(preset("cpu")))
    return [f"{k}={v}" for k, v in run.items() if k not in _DERIVED and base.get(k) != v]


def study(run_dir: Path, data_path: Path, reference: str = "train", sampler: str = "sde-dpm++", steps: int = 20,
          scales: Sequence[float] = (1.0, 2.0), seed: int = 0, bootstrap: int = 5, device: str = "cpu",
          with_behavior: bool = False) -> dict:
    """All rows, the autoencoder report and the run's facts as a JSON-ready dict (module docstring).

    Raises:
        ValueError: data that do not fit the run (neurons, bin width, conditions) or an empty train or
            test split.
    """
    model = LDNS.load(run_dir, device)
    data = read_dataset(data_path)
    if data.n_neurons != model.config.autoencoder.n_neurons:
        raise ValueError(f"{data_path} has {data.n_neurons} neurons, the run {run_dir} expects "
                         f"{model.config.autoencoder.n_neurons}")
    if not np.isclose(data.bin_width, model.bin_width):
        raise ValueError(f"{data_path} has {data.bin_width} s bins, the run was trained on {model.bin_width} s bins")
    if model.config.denoiser.cond_dim and data.conditions is None:
        raise ValueError(f"the run is conditional but {data_path} holds no conditions")
    train, test = data.split("train"), data.split("test")
    for name, split in (("train", train), ("test", test)):
        if split.n_trials == 0:
            raise ValueError(f"{data_path} holds no {name} trials (split code); the study needs train and test")
    real = train if reference == "train" else test
    other_name = "test" if reference == "train" else "train"
    inputs = model.condition_inputs(real)
    if not with_behavior:
        inputs.pop("behavior", None)

    directional = data.conditions is not None and is_direction(data.conditions)
    decoder = DirectionDecoder().fit(train.spikes, _directions(train)) if directional else None
    chance = None
    if decoder is not None:
        predicted, rng = decoder.predict(test.spikes), np.random.default_rng(seed)
        chance = float(np.mean([circular_error_degrees(predicted, rng.permutation(_directions(test))).mean()
                                for _ in range(N_CHANCE_PERMUTATIONS)]))

    rows: dict[str, dict] = {}

    def add(name: str, make: Callable[[], tuple[np.ndarray, np.ndarray]],
            decode: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Row ``name`` of the counts ``[n, T, N]`` and lengths ``[n]`` that ``make()`` returns; the decoder
        column decodes these counts against the reference directions, or ``decode = (counts, directions)``."""
        started = time.perf_counter()
        counts, lengths = make()
        seconds = time.perf_counter() - started
        metrics = compare(real.spikes, counts, data.bin_width, bootstrap, seed, real_lengths=real.lengths,
                          generated_lengths=lengths)
        row = {"n_trials": len(counts), "seconds": seconds,
               **{k: {"point": metrics[k]["point"], "std": metrics[k]["std"]} for k in COLUMNS}}
        if decoder is not None:
            source, target = decode or (counts, _directions(real))
            row[DECODER] = float(circular_error_degrees(decoder.predict(source), target).mean())
        rows[name] = row
        print(f"{name}: {seconds:.1f} s", file=sys.stderr)

    other = data.split(other_name)
    add(f"real {other_name} vs real {reference}", lambda: (other.spikes, other.lengths),
        decode=(test.spikes, _directions(test)) if decoder is not None else None)
    lengths = torch.as_tensor(real.lengths)
    reconstruction = model.reconstruct(real, seed=seed)
    add(RECONSTRUCTION, lambda: (_counts(reconstruction), real.lengths))

    def generate(scale: float, spike_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        out = model.sample(real.n_trials, lengths=lengths, sampler=sampler, steps=steps, seed=seed,
                           guidance_scale=scale, spike_history=spike_history, **inputs)
        return _counts(out), real.lengths

    for scale in scales:
        add(generated_row(sampler, steps, scale), lambda: generate(scale))
    if model.spike_history is not None:
        add(f"{RECONSTRUCTION} + spike history",
            lambda: (_with_history(model, reconstruction.rates, lengths, seed), real.lengths))
        add(generated_row(sampler, steps, 1.0, True), lambda: generate(1.0, True))

    result = {
        "run": str(run_dir), "data": str(data_path), "reference": reference, "sampler": sampler, "steps": steps,
        "scales": list(scales), "seed": seed, "n_bootstrap": bootstrap, "device": device,
        "sample_inputs": sorted(inputs), "spike_history_model": model.spike_history is not None,
        "data_summary": {
            "n_trials": {s: int(data.split(s).n_trials) for s in ("train", "val", "test")},
            "n_bins": data.n_bins, "n_neurons": data.n_neurons, "bin_width": data.bin_width,
            "mean_rate_hz": float(mean_rates(data).mean() / data.bin_width),
        },
        "changed_settings": _changed_settings(model),
        "decoder": None if decoder is None else {"fitted_on": "train", "n_trials": train.n_trials, "chance": chance},
        "autoencoder_report": autoencoder_report(model.autoencoder, data, model.device, seed=seed),
        "rows": rows,
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> list[dict]:
    """The realism targets: ``{"target", "row", "value", "floor", "met"}``; ``met`` is None when the
    row was not measured or the target does not apply (then ``note`` says why)."""
    rows, out = result["rows"], []
    floor_row = next(iter(rows))
    g1 = generated_row(result["sampler"], result["steps"], 1.0)
    history = generated_row(result["sampler"], result["steps"], 1.0, True)

    def value(row: str, key: str) -> float | None:
        entry = rows.get(row, {}).get(key)
        return entry["point"] if isinstance(entry, dict) else entry

    def check(target: str, row: str, key: str, passes: Callable[[float], bool], note: str | None = None) -> None:
        v, floor = value(row, key), value(floor_row, key)
        measured = v is not None and np.isfinite(v)
        entry = {"target": target, "row": row, "value": v, "floor": floor,
                 "met": bool(passes(v)) if measured and note is None else None}
        if measured and note is not None:
            entry["note"] = note
        out.append(entry)

    if DECODER in rows[floor_row]:
        real = value(floor_row, DECODER)
        check("decoder error < 2x real and < 15 deg", RECONSTRUCTION, DECODER, lambda v: v < min(2 * real, 15.0))
        check("decoder error < 20 deg", g1, DECODER, lambda v: v < 20.0)
    check("Pearson r std ISI >= 0.95 (spike history)", history, "pearson_std_isi", lambda v: v >= 0.95)
    real_r = value(floor_row, "pearson_correlation")
    note = None if real_r is not None and real_r >= 0.8 else "not applicable: real floor < 0.8"
    for row in (RECONSTRUCTION, g1, history):
        check("Pearson r correlations >= 0.7 where the real floor >= 0.8", row, "pearson_correlation",
              lambda v: v >= 0.7, note)
    bits = result["autoencoder_report"]["bits_per_spike_vs_psth"]
    out.append({"target": "bits/spike above the PSTH baseline (> 0 vs PSTH)",
                "row": f"autoencoder report ({result['autoencoder_report']['split']} split)", "value": bits,
                "floor": None, "met": bool(bits > 0) if bits is not None and np.isfinite(bits) else None})
    return out


def _cell(entry: object) -> str:
    """A table cell: ``point ± std`` of a metric entry, a number, or ``-`` / ``n/a`` (absent / undefined)."""
    if entry is None:
        return "-"
    point, std = (entry["point"], entry["std"]) if isinstance(entry, dict) else (entry, None)
    if point is None or not np.isfinite(point):
        return "n/a"
    return f"{point:.3g}" + ("" if std is None or not np.isfinite(std) else f" ± {std:.1g}")


def markdown(result: dict) -> str:
    """The study as markdown: commands, machine, autoencoder report, table, targets."""
    m, d, report = result["machine"], result["data_summary"], result["autoencoder_report"]
    setup = result["setup_commands"] or [
        "(training command not given; settings differing from the cpu preset: "
        + (", ".join(result["changed_settings"]) or "none") + ")"]
    lines = [
        f"# Realism study: `{result['run']}` on `{result['data']}`", "", "Commands:", "",
        *[f"    {c}" for c in [*setup, result["command"]]], "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} on {result['device']} with "
        f"{m['torch_threads']} threads, Python {m['python']}.", "",
        f"Data: {d['n_trials']['train']}/{d['n_trials']['val']}/{d['n_trials']['test']} train/val/test trials, "
        f"{d['n_bins']} bins of {d['bin_width'] * 1e3:g} ms, {d['n_neurons']} neurons, {d['mean_rate_hz']:.1f} Hz. "
        f"Reference: the {result['reference']} split; generated sets hold as many trials with its lengths and "
        f"inputs ({', '.join(result['sample_inputs']) or 'unconditional'}), seed {result['seed']}.", "",
    ]
    lines.append(
        f"Autoencoder quality ({report['split']} split, {report['n_trials']} trials): bits/spike vs mean rates "
        f"{_cell(report['bits_per_spike_vs_mean'])}, vs PSTH {_cell(report['bits_per_spike_vs_psth'])} (PSTH vs "
        f"mean {_cell(report['bits_per_spike_psth_vs_mean'])}); PSTH r {_cell(report['psth_r'])} (real split-half "
        f"{_cell(report['psth_r_split_half'])})" + ("" if report["decoding"] is None else
        f"; decoding ({report['decoding']['metric']}) {_cell(report['decoding']['reconstructed'])}, real "
        f"{_cell(report['decoding']['real'])}, chance {_cell(report['decoding']['chance'])}") + ".")
    lines += [f"Warning: {w}" for w in report["warnings"]]
    decoder = result["decoder"]
    columns = ([f"ridge direction decoder, mean error (deg; chance {decoder['chance']:.0f})"] if decoder else []) \
        + [METRIC_LABELS[c] for c in COLUMNS] + ["time (s)"]
    lines += ["", f"| measure ({result['reference']} split) | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    for name, row in result["rows"].items():
        cells = [_cell(row[c]) for c in ([DECODER] if decoder else []) + COLUMNS] + [f"{row['seconds']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Decoder: ridge regression of [cos, sin] (ldns_fast.decoding.DirectionDecoder) fitted on the real "
              "train split; the floor row decodes the real test trials, the others their own trials against the "
              "reference directions; chance: test predictions against permuted directions." if decoder else
              "Decoder: not applicable (the conditions are not 2-d directions).",
              "Metrics: ldns_fast.metrics.compare against the reference split, values on the full sets"
              + (f" ± std over {result['n_bootstrap']} bootstrap resamples." if result["n_bootstrap"] else "."),
              "", "## Realism targets", "",
              "| target | row | value | real floor | status |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        status = t.get("note") or {True: "met", False: "not met", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['row']} | {_cell(t['value'])} | {_cell(t['floor'])} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="trained run folder")
    parser.add_argument("data", type=Path, help="the run's HDF5 dataset")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (writes .json, .md)")
    parser.add_argument("--reference", default="train", choices=["train", "test"], help="real split compared with")
    parser.add_argument("--sampler", default="sde-dpm++", choices=sorted(SAMPLERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0], help="guidance scales")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=5, help="bootstrap resamples of metrics.compare")
    parser.add_argument("--with-behavior", action="store_true", help="also give the behaviour channels to sampling")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-command", action="append", default=[],
                        help="a command that made the data or trained the run (repeatable; shown in the markdown)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.bootstrap < 0 or not all(np.isfinite(args.scales)):
        parser.error("--steps must be >= 1, --bootstrap >= 0 and --scales finite")
    command = "python benchmarks/realism_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        result = study(args.run, args.data, args.reference, args.sampler, args.steps, args.scales, args.seed,
                       args.bootstrap, args.device, args.with_behavior)
    except ValueError as err:
        parser.error(str(err))
    result["command"], result["setup_commands"] = command, args.train_command
    text = markdown(result)
    write_json(result, args.out.with_suffix(".json"))
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
