"""Evaluate generated spiking data against real data: the paper's metrics, bootstrapped, plus figures.

    python -m ldns_fast.evaluate --real REAL.h5 --generated GEN.h5 [--split test] [--out DIR]
        [--bootstrap 5] [--seed 0] [--no-plots]
    python -m ldns_fast.evaluate --checkpoint RUN [--real REAL.h5] [--sampler sde-dpm++ --steps 20] [--out DIR]
    python -m ldns_fast.evaluate --checkpoint RUN --reconstruction [--split test]

Both files use the format of ``docs/data_format.md``. The real file's ``--split`` (or ``all``) is
compared with every trial of the generated file. With ``--checkpoint`` the generated trials are sampled
from a trained run (as many as the real split holds, with the same lengths), and the real data default
to the run's own dataset; ``--reconstruction`` compares the autoencoder's reconstructions of the real
trials instead (the ceiling any sampler of that run can reach) and adds the autoencoder quality report of
``ldns_fast.quality`` on the real data's ``--split`` (``val`` for ``all``; "autoencoder_report" in
metrics.json). The table (metric: value on the full sets, bootstrap mean +- std) is printed;
with ``--out``, ``metrics.json`` and the PNG figures are written there (with ``--checkpoint``, also
``training_curves.png``: the run's losses per stage from its ``metrics.csv``).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ldns_fast.atomic import check_output_dir, write_json
from ldns_fast.cli import Parser, clear_errors
from ldns_fast.data import SpikeData, read_dataset
from ldns_fast.diffusion import SAMPLERS, SPACINGS
from ldns_fast.metrics import METRIC_LABELS, compare
from ldns_fast.plots import plot_all, plot_training_curves

if TYPE_CHECKING:
    from ldns_fast.pipeline import LDNS

SPLIT_CHOICES = ("train", "val", "test", "all")


def check_compatible(real: SpikeData, generated: SpikeData) -> None:
    """Raise ValueError unless both sets have the same number of neurons and bin width."""
    if real.n_neurons != generated.n_neurons:
        raise ValueError(f"neuron counts differ: real data has {real.n_neurons}, generated data "
                         f"{generated.n_neurons}")
    if not math.isclose(real.bin_width, generated.bin_width, rel_tol=1e-9):
        raise ValueError(f"bin widths differ: real data {real.bin_width} s, generated data "
                         f"{generated.bin_width} s")


def _describe(data: SpikeData) -> dict[str, object]:
    return {"path": data.path, "description": data.description, "n_trials": data.n_trials,
            "n_bins": data.n_bins, "n_neurons": data.n_neurons}


def evaluate_data(
    real: SpikeData,
    generated: SpikeData,
    *,
    out_dir: str | os.PathLike | None = None,
    n_bootstrap: int = 5,
    seed: int = 0,
    plots: bool = True,
    split: str | None = None,
    extra: dict[str, object] | None = None,
    figures: Sequence[Path] = (),
) -> dict[str, object]:
    """Compare two in-memory sets; with ``out_dir``, write ``metrics.json`` and (if ``plots``) PNGs.

    ``figures``: further PNGs already written there, listed with the others under "plots".

    Returns ``{"real": {path, description, split, n_trials, n_bins, n_neurons}, "generated": {...},
    "bin_width", "n_bootstrap", "seed", "metrics": compare(...), "plots": [paths]}`` (``split`` only records where
    the real trials came from) plus the entries of ``extra``.

    Raises:
        ValueError: different neuron counts or bin widths.
    """
    check_compatible(real, generated)
    metrics = compare(real.spikes, generated.spikes, real.bin_width, n_bootstrap, seed,
                      real_lengths=real.lengths, generated_lengths=generated.lengths)
    result: dict[str, object] = {
        "real": {**_describe(real), "split": split}, "generated": _describe(generated),
        "bin_width": real.bin_width, "n_bootstrap": n_bootstrap, "seed": seed, "metrics": metrics,
        "plots": [], **(extra or {}),
    }
    if out_dir is not None:
        if plots:
            paths = plot_all(real.spikes, generated.spikes, out_dir, bin_width=real.bin_width,
                             real_lengths=real.lengths, generated_lengths=generated.lengths,
                             real_latents=real.latents, generated_latents=generated.latents, seed=seed)
            result["plots"] = [str(p) for p in [*paths, *figures]]
        write_json(result, Path(out_dir) / "metrics.json")
    return result


def evaluate_files(
    real_path: str | os.PathLike,
    generated_path: str | os.PathLike,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    n_bootstrap: int = 5,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, object]:
    """Read both files, take the real file's ``split`` (``"all"``: every trial), run :func:`evaluate_data`.

    Raises:
        DataFormatError: an invalid file.
        ValueError: unknown or empty split, different neuron counts or bin widths.
    """
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    real = read_dataset(real_path)
    if split != "all":
        real = real.split(split)
    if real.n_trials == 0:
        raise ValueError(f"{real_path}: the {split!r} split holds no trials")
    return evaluate_data(real, read_dataset(generated_path), out_dir=out_dir, n_bootstrap=n_bootstrap,
                         seed=seed, plots=plots, split=split)


def sample_from_run(
    model: LDNS, lengths: np.ndarray, *, sampler: str = "sde-dpm++", steps: int = 20, seed: int = 0,
    spacing: str | None = None, progress: bool = False, spike_history: bool = False,
    like: SpikeData | None = None, source: str = "",
) -> SpikeData:
    """Generate one trial per entry of ``lengths`` from a loaded run, as an in-memory :class:`SpikeData`.

    A conditional run is given the conditions and behaviour of the real trials ``like`` (the set it is
    compared with); an unconditional run ignores them. ``spacing`` overrides the sampler's default
    timesteps. ``source`` names the run in the description.
    """
    kwargs = model.condition_inputs(like) if like is not None else {}
    if spacing is not None:
        kwargs["spacing"] = spacing
    out = model.sample(len(lengths), lengths=torch.as_tensor(lengths), sampler=sampler, steps=steps, seed=seed,
                       progress=progress, spike_history=spike_history, **kwargs)
    spaced = "" if spacing is None else f", {spacing} spacing"
    return out.to_spike_data(model.bin_width, f"sampled from {source} ({sampler}-{steps}{spaced}, seed {seed})")


def format_table(metrics: dict[str, dict[str, object]]) -> str:
    """One line per metric: ``label  full-set value  bootstrap mean ± std`` (4 significant digits).

    The full-set value is the estimate (the paper's Pearson r are full-set values); the bootstrap std is
    its uncertainty. Resampling with replacement repeats trials, which adds sampling noise: bootstrap
    means are biased towards worse values (lower r, higher KL and RMSE).
    """
    width = max(len(label) for label in METRIC_LABELS.values())
    lines = [f"{'metric':<{width}}  {'full sets':>10}  bootstrap mean ± std"]
    for name, label in METRIC_LABELS.items():
        entry = metrics[name]
        lines.append(f"{label:<{width}}  {entry['point']:>10.4g}  {entry['mean']:.4g} ± {entry['std']:.2g}")
    return "\n".join(lines)


def _parser() -> Parser:
    parser = Parser(prog="python -m ldns_fast.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--real", help="HDF5 file of real data (default with --checkpoint: the run's dataset)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--generated", help="HDF5 file of generated data (all trials used)")
    source.add_argument("--checkpoint", help="trained run folder to sample the generated trials from")
    parser.add_argument("--sampler", default="sde-dpm++", choices=sorted(SAMPLERS), help="with --checkpoint")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps with --checkpoint")
    parser.add_argument("--spacing", choices=SPACINGS,
                        help="timesteps with --checkpoint (default: the sampler's, see python -m ldns_fast.sample)")
    parser.add_argument("--device", default="cpu", help="device for sampling with --checkpoint")
    parser.add_argument("--spike-history", action="store_true",
                        help="with --checkpoint: draw spikes with the run's spike-history model")
    parser.add_argument("--reconstruction", action="store_true",
                        help="with --checkpoint: compare the autoencoder's reconstructions of the real trials "
                             "(its ceiling) instead of sampled trials")
    parser.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="split of the real file")
    parser.add_argument("--out", default=None, help="folder for metrics.json and figures (none: print only)")
    parser.add_argument("--bootstrap", type=int, default=5, help="bootstrap resamples (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples and figures")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    return parser


def _evaluate_checkpoint(args: argparse.Namespace) -> dict[str, object]:
    """Load ``--checkpoint`` once; sample as many trials as the real split holds (same lengths), or
    reconstruct them with ``--reconstruction``, and compare."""
    from ldns_fast.pipeline import LDNS
    from ldns_fast.quality import autoencoder_report
    from ldns_fast.run import METRICS_FILE, load_data, read_metrics

    model = LDNS.load(args.checkpoint, args.device)
    data = read_dataset(args.real) if args.real is not None else load_data(model.config)
    real = data if args.split == "all" else data.split(args.split)
    if real.n_trials == 0:
        raise ValueError(f"the real data's {args.split!r} split holds no trials")
    extra = {}
    if args.reconstruction:
        recon = model.reconstruct(real, seed=args.seed)
        generated = recon.to_spike_data(real.bin_width, f"autoencoder reconstruction by {args.checkpoint}")
        split = "val" if args.split == "all" else args.split
        extra["autoencoder_report"] = autoencoder_report(model.autoencoder, data, model.device, split, seed=args.seed)
    else:
        generated = sample_from_run(model, real.lengths, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                    spacing=args.spacing, spike_history=args.spike_history, like=real,
                                    source=args.checkpoint)
    figures = []
    log = Path(args.checkpoint) / METRICS_FILE
    if args.out is not None and not args.no_plots and log.is_file():
        figures.append(plot_training_curves(read_metrics(log), Path(args.out) / "training_curves.png"))
    return evaluate_data(real, generated, out_dir=args.out, n_bootstrap=args.bootstrap, seed=args.seed,
                         plots=not args.no_plots, split=args.split, extra=extra, figures=figures)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (argument or data errors exit with 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    if args.reconstruction and args.checkpoint is None:
        parser.error("--reconstruction needs --checkpoint")
    if args.checkpoint is None and args.real is None:
        parser.error("--real is required with --generated")
    with clear_errors():  # one line "error: ..." (exit 2) for bad files, checkpoints, settings or outputs
        if args.out is not None:
            check_output_dir(args.out)  # before any work
        if args.checkpoint is None:
            result = evaluate_files(args.real, args.generated, split=args.split, out_dir=args.out,
                                    n_bootstrap=args.bootstrap, seed=args.seed, plots=not args.no_plots)
        else:
            result = _evaluate_checkpoint(args)
    real, generated = result["real"], result["generated"]
    print(f"real: {real['path']} ({args.split}, {real['n_trials']} trials); "
          f"generated: {generated['path'] or generated['description']} ({generated['n_trials']} trials); "
          f"{real['n_neurons']} neurons, bin width {result['bin_width']} s, {args.bootstrap} bootstrap resamples")
    print(format_table(result["metrics"]))
    if "autoencoder_report" in result:
        from ldns_fast.quality import format_report

        print(format_report(result["autoencoder_report"]))
    if args.out is not None:
        print(f"wrote {Path(args.out) / 'metrics.json'} and {len(result['plots'])} figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
