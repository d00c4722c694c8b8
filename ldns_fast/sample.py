"""``python -m ldns_fast.sample``: generate trials from a trained run and write them to HDF5.

Example::

    python -m ldns_fast.sample runs/lorenz --n 500 --sampler sde-dpm++ --steps 20 --seed 0 --out samples.h5

The output follows the dataset format (docs/data_format.md): ``spikes`` [n, T, N], ``rates``,
``latents`` [n, T, C], ``lengths`` and ``bin_width``, so it reads back with
``ldns_fast.data.read_dataset`` and feeds the evaluation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ldns_fast.checkpoint import CheckpointError
from ldns_fast.data import read_dataset, write_dataset
from ldns_fast.diffusion import SAMPLERS, SPACINGS
from ldns_fast.pipeline import LDNS, Samples


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldns_fast.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="trained run folder (holds autoencoder.pt and diffusion.pt)")
    p.add_argument("--n", type=int, default=100, help="number of trials")
    p.add_argument("--length", type=int, help="bins per trial (default: the training length)")
    p.add_argument("--lengths", type=int, nargs="+", help="per-trial lengths (overrides --n and --length)")
    p.add_argument("--sampler", default="sde-dpm++", choices=sorted(SAMPLERS),
                   help="default sde-dpm++: the 20-step sampler closest to 1000-step DDPM (measured)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (DDPM reference: 1000)")
    p.add_argument("--spacing", choices=SPACINGS,
                   help="timesteps (default: logsnr for dpm++ and sde-dpm++, trailing for ddim and ddpm)")
    p.add_argument("--eta", type=float, help="noise scale of ddim / dpm++ in [0, 1] (default 0: deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, help="output HDF5 (default RUN/samples.h5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--spike-history", action="store_true",
                   help="draw spikes with the run's fitted spike-history model instead of Poisson")
    p.add_argument("--like", type=Path, help="dataset file whose trials (lengths and, for a conditional model, "
                   "conditions and behaviour) the samples follow; overrides --n/--length/--lengths")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="split of --like")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (conditional runs)")
    p.add_argument("--compile", action="store_true",
                   help="run the denoiser through torch.compile (CUDA graphs on CUDA; compiling takes a while)")
    p.add_argument("--no-progress", action="store_true")
    return p


def write_samples(path: Path, samples: Samples, bin_width: float, description: str) -> Path:
    """Write generated trials as a dataset file (time before channels)."""
    data = samples.to_spike_data(bin_width, description)
    return write_dataset(path, data.spikes, bin_width=bin_width, lengths=data.lengths, rates=data.rates,
                         latents=data.latents, split=data.split_codes, description=description)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.eta is not None and args.sampler not in ("ddim", "dpm++"):
        p.error(f"--eta applies to ddim and dpm++ (ddpm and sde-dpm++ are eta = 1), not {args.sampler}")
    try:
        model = LDNS.load(args.run, args.device)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from err
    kwargs = {} if args.eta is None else {"eta": args.eta}
    if args.spacing is not None:
        kwargs["spacing"] = args.spacing
    lengths = args.lengths
    try:
        if args.like is not None:
            like = read_dataset(args.like)
            like = like if args.split == "all" else like.split(args.split)
            lengths = like.lengths.tolist()
            kwargs.update(model.condition_inputs(like))
        n = len(lengths) if lengths else args.n
        started = time.perf_counter()
        samples = model.sample(n, length=args.length, lengths=lengths, sampler=args.sampler, steps=args.steps,
                               seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                               spike_history=args.spike_history, guidance_scale=args.guidance_scale,
                               compile=args.compile, **kwargs)
    except ValueError as err:  # DataFormatError too
        raise SystemExit(f"error: {err}") from err
    seconds = time.perf_counter() - started
    out = args.out or args.run / "samples.h5"
    spacing = "" if args.spacing is None else f" ({args.spacing} spacing)"
    description = f"ldns_fast samples: {args.sampler}-{args.steps}{spacing}, seed {args.seed}, from {args.run}"
    write_samples(out, samples, model.bin_width, description)
    print(f"wrote {n} trials to {out} in {seconds:.1f} s ({args.sampler}, {args.steps} steps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
