"""``python -m ldns_fast.export RUN --out DIR``: export a trained run's sampler, denoiser and decoder to ONNX.

Example::

    python -m ldns_fast.export runs/lorenz --out runs/lorenz/onnx --sampler dpm++ --steps 20

The files run with onnxruntime alone (``ldns_fast.export.OnnxSampler`` or a plain
``onnxruntime.InferenceSession``); their metadata holds the model config, bin width, neuron count,
latent normalisation and the session options they need.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldns_fast.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="trained run folder (holds autoencoder.pt and diffusion.pt)")
    p.add_argument("--out", type=Path, help="output folder (default RUN/onnx)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++"], help="deterministic sampler to unroll")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--conv", default="auto", choices=["auto", "direct", "chunked", "fft"],
                   help="S4 convolution in the graphs: direct Toeplitz product (short trials), chunked scan "
                        "(matmuls, linear in the length: long recordings, GPUs), real DFTs, or auto by --max-length")
    p.add_argument("--max-length", type=int, help="longest trial you will sample (default: the training length; "
                                                   "a chunked graph holds at least 2^20 bins)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (conditional runs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ldns_fast.checkpoint import CheckpointError
    from ldns_fast.lock import OutputBusyError, exclusive_lock

    from .onnx_export import export_onnx

    out = args.out or args.run / "onnx"
    started = time.perf_counter()
    try:
        with exclusive_lock(out, folder=True):  # one exporter per output folder
            files = export_onnx(args.run, out, sampler=args.sampler, steps=args.steps, conv=args.conv,
                                max_length=args.max_length, guidance_scale=args.guidance_scale,
                                overwrite=args.overwrite)
    except (CheckpointError, ValueError, FileExistsError, OutputBusyError) as err:  # ExportError is a ValueError
        raise SystemExit(f"error: {err}") from err
    seconds = time.perf_counter() - started
    print(f"wrote {files.sampler}, {files.denoiser}, {files.decoder} in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
