"""``python -m ldns_fast.train``: train the autoencoder, then the latent diffusion model.

Examples::

    python -m ldns_fast.train --out runs/lorenz                    # cpu preset on synthetic Lorenz
    python -m ldns_fast.train --preset paper --device cuda --out runs/paper
    python -m ldns_fast.train --config my.yaml --data my_data.h5 --out runs/mine
    python -m ldns_fast.train --out runs/lorenz --resume            # continue an interrupted run
    torchrun --nproc_per_node 4 -m ldns_fast.train --preset paper --device cuda --out runs/ddp

Settings come from ``--preset`` (``cpu`` by default), then ``--config`` (YAML, partial allowed), then
``--set section.key=value`` overrides. The full configuration is written to ``OUT/config.yaml``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml

from ldns_fast.checkpoint import save_yaml
from ldns_fast.config import RunConfig, load_config, merge, preset, to_dict
from ldns_fast.training.loop import distributed_context
from ldns_fast.training.stages import (
    AUTOENCODER_FILE,
    DIFFUSION_FILE,
    fit_spike_history,
    load_data,
    train_autoencoder,
    train_diffusion,
)


def parse_overrides(items: Sequence[str]) -> dict:
    """``["autoencoder.hidden=64", ...]`` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def build_config(args: argparse.Namespace) -> RunConfig:
    """Preset -> YAML file -> flags -> ``--set`` overrides."""
    config = load_config(args.config, preset(args.preset)) if args.config else preset(args.preset)
    flags: dict = {}
    if args.data:
        flags.setdefault("data", {})["source"] = str(args.data)
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.ae_epochs is not None:
        flags.setdefault("autoencoder_training", {})["epochs"] = args.ae_epochs
    if args.diffusion_epochs is not None:
        flags.setdefault("diffusion_training", {})["epochs"] = args.diffusion_epochs
    return merge(merge(config, flags), parse_overrides(args.set))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldns_fast.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/lorenz"), help="output folder (default runs/lorenz)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="base configuration")
    p.add_argument("--config", type=Path, help="YAML file of settings on top of the preset")
    p.add_argument("--data", type=Path, help="HDF5 dataset (docs/data_format.md) instead of synthetic Lorenz")
    p.add_argument("--stage", default="all", choices=["all", "autoencoder", "diffusion"])
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints in --out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--seed", type=int)
    p.add_argument("--ae-epochs", type=int, help="autoencoder epochs (overrides the config)")
    p.add_argument("--diffusion-epochs", type=int, help="denoiser epochs (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set autoencoder.hidden=64 (repeatable)")
    p.add_argument("--spike-history", action="store_true",
                   help="also fit the spike-history observation model on the autoencoder's rates")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_out_dir(out: Path, args: argparse.Namespace) -> None:
    """Refuse to overwrite checkpoints silently; ``--stage diffusion`` builds on an existing autoencoder."""
    produced = (DIFFUSION_FILE,) if args.stage == "diffusion" else (AUTOENCODER_FILE, DIFFUSION_FILE)
    existing = [f for f in produced if (out / f).exists()]
    if existing and not (args.resume or args.overwrite):
        raise SystemExit(
            f"error: {out} already holds {', '.join(existing)}; pass --resume to continue that run, "
            f"--overwrite to replace it, or choose another --out"
        )
    if args.overwrite and not args.resume:
        for f in existing:
            (out / f).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    ctx = distributed_context(args.device)
    out: Path = args.out
    if ctx.is_main:
        _check_out_dir(out, args)
        save_yaml(out / "config.yaml", to_dict(config))
    data = load_data(config)
    config = merge(config, {"autoencoder": {"n_neurons": data.n_neurons}, "denoiser": {
        "latent": config.autoencoder.latent,
        "cond_dim": 0 if data.conditions is None else int(data.conditions.shape[1]),
        "behavior_channels": 0 if data.behavior is None else int(data.behavior.shape[2]),
    }})
    progress = not args.no_progress
    started = time.perf_counter()
    if args.stage == "diffusion" and not (out / AUTOENCODER_FILE).exists():
        raise SystemExit(f"error: --stage diffusion needs a trained {out / AUTOENCODER_FILE}")
    # --stage diffusion builds on the autoencoder already in --out (reloaded, or finished if interrupted).
    autoencoder, ae_history = train_autoencoder(config, data, out, ctx, resume=args.resume or args.stage == "diffusion",
                                                compile=args.compile, progress=progress)
    report = {"autoencoder": ae_history[-1] if ae_history else {}}
    if args.spike_history and ctx.is_main:
        _, losses = fit_spike_history(autoencoder, data, out, ctx.device)
        report["spike_history"] = {"nll": losses[-1]}
    if args.stage != "autoencoder":
        _, diffusion_history = train_diffusion(config, autoencoder, data, out, ctx, resume=args.resume,
                                               compile=args.compile, progress=progress)
        report["diffusion"] = diffusion_history[-1] if diffusion_history else {}
    if ctx.is_main:
        save_yaml(out / "config.yaml", to_dict(config))
        minutes = (time.perf_counter() - started) / 60
        print(f"trained in {minutes:.1f} min; final losses: {report}; checkpoints in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
