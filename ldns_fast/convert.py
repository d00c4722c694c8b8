"""``python -m ldns_fast.convert``: convert recordings to the dataset format (docs/data_format.md).

    python -m ldns_fast.convert nwb IN.nwb OUT.h5 --bin-width 0.02 [--align COL --window -0.5 1.0]
        [--window-length SECONDS] [--behavior NAME ...] [--conditions COL ...] [--units ID ...] [--overwrite]

``nwb`` bins the spike times of an NWB file's units table (needs ``pip install "ldns_fast[nwb]"``):
trials from the trials table (start to stop, or ``--window`` around the ``--align`` column) or, with
``--window-length``, consecutive windows over the whole recording. See ``ldns_fast.data.nwb.read_nwb``.
The output holds no ``split``, so ``read_dataset`` draws its default seeded split.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ldns_fast.data import read_nwb, write_dataset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldns_fast.convert",
                                     description="Convert recordings to the dataset format (docs/data_format.md).")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    nwb = formats.add_parser("nwb", help="NWB file with a units table", description=read_nwb.__doc__.split("\n")[0])
    nwb.add_argument("input", type=Path, help="NWB file")
    nwb.add_argument("output", type=Path, help="HDF5 dataset file to write")
    nwb.add_argument("--bin-width", type=float, required=True, help="seconds per bin, e.g. 0.02")
    nwb.add_argument("--align", metavar="COL", help="trials column of times to align to (needs --window)")
    nwb.add_argument("--window", type=float, nargs=2, metavar=("BEFORE", "AFTER"),
                     help="seconds around --align, e.g. -0.5 1.0 (default: trials from start_time to stop_time)")
    nwb.add_argument("--window-length", type=float, metavar="SECONDS",
                     help="cut the whole recording into consecutive windows (files without a trials table)")
    nwb.add_argument("--behavior", nargs="+", default=[], metavar="NAME",
                     help="TimeSeries names or paths (acquisition/processing) resampled at the bin centres")
    nwb.add_argument("--conditions", nargs="+", default=[], metavar="COL", help="numeric trials columns")
    nwb.add_argument("--units", type=int, nargs="+", metavar="ID", help="unit ids to keep (default: all)")
    nwb.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return parser


def _convert_nwb(args: argparse.Namespace, fail: argparse.ArgumentParser) -> None:
    """Read, write and summarise; every refusal goes through ``fail.error`` (exit status 2)."""
    if args.output.exists() and not args.overwrite:
        fail.error(f"{args.output} exists; pass --overwrite to replace it")
    if args.output.resolve() == args.input.resolve():
        fail.error(f"the output {args.output} is the input file")
    window = None if args.window is None else tuple(args.window)
    try:
        data = read_nwb(args.input, bin_width=args.bin_width, align=args.align, window=window,
                        window_length=args.window_length, behavior=args.behavior, conditions=args.conditions,
                        units=args.units)
        write_dataset(args.output, data.spikes, bin_width=data.bin_width, lengths=data.lengths,
                      behavior=data.behavior, conditions=data.conditions, description=data.description)
    except (ImportError, ValueError) as err:  # DataFormatError is a ValueError
        fail.error(str(err))
    extras = [f"{array.shape[-1]} {name} columns" for name, array in
              (("behavior", data.behavior), ("conditions", data.conditions)) if array is not None]
    print(f"wrote {args.output}: {data.n_trials} trials, {data.n_bins} bins, {data.n_neurons} neurons, "
          f"bin width {data.bin_width} s" + "".join(f", {e}" for e in extras))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (argument or data errors exit with 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    _convert_nwb(args, parser)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
