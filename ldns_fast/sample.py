"""``python -m ldns_fast.sample``: generate trials from a trained run and write them to HDF5.

Example::

    python -m ldns_fast.sample runs/lorenz --n 500 --sampler sde-dpm++ --steps 20 --seed 0 --out samples.h5

The output follows the dataset format (docs/data_format.md): ``spikes`` [n, T, N], ``rates``,
``latents`` [n, T, C], ``lengths`` and ``bin_width``, so it reads back with
``ldns_fast.data.read_dataset`` and feeds the evaluation. Trials are generated in batches of at most
``--max-bins`` bins and streamed to the file, so memory stays bounded however many trials are asked
for. An existing output is kept unless ``--overwrite``, and one sampler at a time writes an output
(a lock beside it); every refusal (bad run, data, settings, device or output path, an output being
written by another process) is one line ``error: ...`` with exit status 2, before any sampling.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ldns_fast.atomic import check_output_file
from ldns_fast.cli import Parser, clear_errors
from ldns_fast.data import DatasetWriter, read_dataset
from ldns_fast.lock import exclusive_lock
from ldns_fast.diffusion import SAMPLERS, SPACINGS
from ldns_fast.pipeline import DEFAULT_MAX_BINS, LDNS, Samples


def parser() -> Parser:
    p = Parser(prog="python -m ldns_fast.sample", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--batch-size", type=int, default=256, help="most trials per denoiser batch")
    p.add_argument("--max-bins", type=int, default=DEFAULT_MAX_BINS,
                   help=f"most bins (trials x length) per denoiser batch; bounds memory (default {DEFAULT_MAX_BINS})")
    p.add_argument("--out", type=Path, help="output HDF5 (default RUN/samples.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
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


def write_samples(path: Path, batches: Iterable[tuple[int, Samples]], n_trials: int, n_bins: int,
                  model: LDNS, description: str) -> Path:
    """Stream ``model.batches(...)`` of ``n_trials`` trials (at most ``n_bins`` bins) into a dataset file
    (time before channels), atomically: the file appears complete or not at all."""
    c = model.config
    writer = DatasetWriter(path, n_trials, n_bins, c.autoencoder.n_neurons, c.autoencoder.latent, model.bin_width,
                           description)
    with writer:
        for start, part in batches:
            data = part.to_spike_data(model.bin_width)
            writer.write(np.arange(start, start + data.n_trials), data.spikes, data.rates, data.latents, data.lengths)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.eta is not None and args.sampler not in ("ddim", "dpm++"):
        p.error(f"--eta applies to ddim and dpm++ (ddpm and sde-dpm++ are eta = 1), not {args.sampler}")
    out = args.out or args.run / "samples.h5"
    kwargs = {} if args.eta is None else {"eta": args.eta}
    if args.spacing is not None:
        kwargs["spacing"] = args.spacing
    def refuse_existing() -> None:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or choose another --out")

    with clear_errors():  # every refusal before the sampling starts; nothing is written on failure
        check_output_file(out)
        refuse_existing()
        model = LDNS.load(args.run, args.device)
        lengths = args.lengths
        if args.like is not None:
            like = read_dataset(args.like)
            like = like if args.split == "all" else like.split(args.split)
            if like.n_trials == 0:
                raise ValueError(f"the {args.split!r} split of {args.like} holds no trials")
            lengths = like.lengths.tolist()
            kwargs.update(model.condition_inputs(like))
        n = len(lengths) if lengths else args.n
        batches = model.batches(n, args.length, lengths, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                batch_size=args.batch_size, max_bins=args.max_bins, progress=not args.no_progress,
                                spike_history=args.spike_history, guidance_scale=args.guidance_scale,
                                compile=args.compile, **kwargs)
        n_bins = max(lengths) if lengths else (args.length or model.n_bins)  # batches() checked them
        spacing = "" if args.spacing is None else f" ({args.spacing} spacing)"
        description = f"ldns_fast samples: {args.sampler}-{args.steps}{spacing}, seed {args.seed}, from {args.run}"
        started = time.perf_counter()
        with exclusive_lock(out):  # one writer per output; another sampler may have written it meanwhile
            refuse_existing()
            write_samples(out, batches, n, n_bins, model, description)
    seconds = time.perf_counter() - started
    print(f"wrote {n} trials to {out} in {seconds:.1f} s ({args.sampler}, {args.steps} steps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
