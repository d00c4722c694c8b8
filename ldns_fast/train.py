"""``python -m ldns_fast.train``: train the autoencoder, then the latent diffusion model.

Examples::

    python -m ldns_fast.train --out runs/lorenz                    # cpu preset on synthetic Lorenz
    python -m ldns_fast.train --preset paper --device cuda --out runs/paper
    python -m ldns_fast.train --config my.yaml --data my_data.h5 --out runs/mine
    python -m ldns_fast.train --out runs/lorenz --resume            # continue an interrupted run
    python -m ldns_fast.train --config runs/lorenz/config.yaml --out runs/again   # the same run again
    torchrun --nproc_per_node 4 -m ldns_fast.train --preset paper --device cuda --out runs/ddp

Settings come from ``--preset`` (``cpu`` by default), then ``--config`` (YAML, partial allowed), then
flags and ``--set section.key=value`` overrides. The models' sizes that follow from the data (neurons,
the denoiser's latent size, condition and behaviour widths) are then filled in by ``RunConfig.resolve``: a
preset's values for them are placeholders, while one set by ``--config`` or ``--set`` must agree with the
data (an error otherwise). ``--spike-history`` is ``--set spike_history.enabled=true``. The full, resolved
configuration is written to ``OUT/config.yaml`` before training starts and is the run's source of truth:
``--resume`` starts from it (flags may repeat a setting, not change it), and ``--config OUT/config.yaml``
repeats the run (bitwise on CPU: every random draw follows from ``seed``).

Each epoch appends a row to ``OUT/metrics.csv``. Unless a progress bar shows on a terminal (none with
``--no-progress`` or when the output goes to files, as in batch jobs) one line per epoch (at most about
100 per stage) goes to stdout; ``--log tensorboard`` also writes TensorBoard event files under
``OUT/tensorboard``. One process at a time trains in a folder (a lock inside it). Every refusal
(settings, data, device, output folder, checkpoints, a folder in use) is one line ``error: ...`` with
exit status 2 before anything in ``OUT`` changes, and ``--overwrite`` keeps the old run's files until the
new run writes its own.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import yaml

from ldns_fast.atomic import check_output_dir, write_json
from ldns_fast.checkpoint import load_checkpoint, save_yaml
from ldns_fast.cli import Parser, clear_errors
from ldns_fast.config import (
    RunConfig, describe_differences, load_config, merge, parse_yaml, preset, read_settings, setting_names, to_dict,
    update_nested,
)
from ldns_fast.lock import exclusive_lock
from ldns_fast.models import Autoencoder, Denoiser
from ldns_fast.quality import autoencoder_report, format_report
from ldns_fast.spike_history import SpikeHistoryModel
from ldns_fast.training.log import TrainingLog
from ldns_fast.training.loop import distributed_context, require_settings
from ldns_fast.run import (
    AUTOENCODER_DIGEST, AUTOENCODER_FILE, AUTOENCODER_REPORT_FILE, DIFFUSION_FILE, load_data, weights_digest,
)
from ldns_fast.training.stages import (
    autoencoder_stage_config,
    diffusion_stage_config,
    fit_spike_history,
    remove_stale,
    train_autoencoder,
    train_diffusion,
)
from ldns_fast.validation import check_device

CONFIG_FILE = "config.yaml"


def parse_overrides(items: Sequence[str]) -> dict:
    """``["autoencoder.hidden=64", ...]`` -> nested dict with YAML-parsed values (``1e-4`` is a number)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parse_yaml(value)
    return out


def settings_layers(args: argparse.Namespace) -> list[dict]:
    """The settings the command line gives, in the order they apply: the ``--config`` file's (its ``preset``
    key dropped), the flags' and the ``--set`` overrides'."""
    file = {k: v for k, v in read_settings(args.config).items() if k != "preset"} if args.config else {}
    flags: dict = {}
    if args.data:
        flags.setdefault("data", {})["source"] = str(args.data.expanduser().resolve())
    if args.seed is not None:
        flags["seed"] = args.seed
    for stage in ("ae", "diffusion"):
        section = "autoencoder_training" if stage == "ae" else "diffusion_training"
        epochs, steps = getattr(args, f"{stage}_epochs"), getattr(args, f"{stage}_steps")
        if epochs is not None:  # an epoch count replaces the step budget
            flags.setdefault(section, {}).update(epochs=epochs, steps=0)
        if steps is not None:
            flags.setdefault(section, {})["steps"] = steps
    if args.spike_history:
        flags["spike_history"] = {"enabled": True}
    return [file, flags, parse_overrides(args.set)]


def build_config(
    args: argparse.Namespace, stored: RunConfig | None = None, layers: list[dict] | None = None,
) -> RunConfig:
    """Base (``--preset``, else the resumed run's ``stored`` config, else the cpu preset) -> YAML file ->
    flags -> ``--set`` overrides (``layers``: :func:`settings_layers`, read here when not given). The
    data-derived sizes are not resolved yet (:meth:`RunConfig.resolve`)."""
    config = preset(args.preset or "cpu") if stored is None or args.preset else stored
    for layer in settings_layers(args) if layers is None else layers:
        config = merge(config, layer)
    return config


def chosen_settings(layers: list[dict]) -> set[str]:
    """Dotted names of the settings that the command line's ``layers`` (:func:`settings_layers`) set: the
    data-derived sizes among them must agree with the data (:meth:`RunConfig.resolve`)."""
    given: dict = {}
    for layer in layers:
        given = update_nested(given, layer)
    return setting_names(given)


def parser() -> Parser:
    p = Parser(prog="python -m ldns_fast.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/lorenz"), help="output folder (default runs/lorenz)")
    p.add_argument("--preset", choices=["cpu", "paper"],
                   help="base configuration (default cpu; with --resume, the run's config.yaml)")
    p.add_argument("--config", type=Path, help="YAML file of settings on top of the preset")
    p.add_argument("--data", type=Path, help="HDF5 dataset (docs/data_format.md) instead of synthetic Lorenz")
    p.add_argument("--stage", default="all", choices=["all", "autoencoder", "diffusion"])
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in --out with the settings of its config.yaml")
    existing.add_argument("--overwrite", action="store_true",
                          help="train a new run in --out, replacing its files as the new ones are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--seed", type=int)
    p.add_argument("--ae-epochs", type=int, help="autoencoder epochs (replaces the config's budget)")
    p.add_argument("--ae-steps", type=int, help="autoencoder budget in optimisation steps")
    p.add_argument("--diffusion-epochs", type=int, help="denoiser epochs (replaces the config's budget)")
    p.add_argument("--diffusion-steps", type=int, help="denoiser budget in optimisation steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set autoencoder.hidden=64 (repeatable)")
    p.add_argument("--spike-history", action="store_true",
                   help="also fit the spike-history observation model on the autoencoder's rates "
                        "(= --set spike_history.enabled=true; settings: --set spike_history.KEY=VALUE)")
    p.add_argument("--log", default="csv", choices=["csv", "tensorboard"],
                   help="OUT/metrics.csv always; tensorboard: also event files in OUT/tensorboard "
                        "(pip install 'ldns_fast[tensorboard]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: a line per epoch instead")
    return p


def _stored_config(out: Path) -> RunConfig | None:
    """The settings of the run in ``out`` (its config.yaml), or None when it has none."""
    path = out / CONFIG_FILE
    return load_config(path, RunConfig()) if path.is_file() else None


def _check_settings(config: RunConfig) -> None:
    """Build the models once (then dropped) so a bad model setting is refused before anything is written."""
    with torch.random.fork_rng(devices=[]):
        Autoencoder(config.autoencoder)
        Denoiser(config.denoiser)
        if config.spike_history.enabled:
            SpikeHistoryModel.from_config(config.autoencoder.n_neurons, config.spike_history)


def _check_resumed_settings(stored: RunConfig, config: RunConfig, out: Path) -> None:
    """``--resume`` continues the settings of ``out/config.yaml``: refuse a command line that changes them."""
    if to_dict(stored) != to_dict(config):
        changes = describe_differences(to_dict(stored), to_dict(config), CONFIG_FILE, "the command line")
        raise ValueError(f"--resume continues {out} with the settings of its {CONFIG_FILE}, but the command line "
                         f"changes them ({changes}); drop those options, or train into a new --out")


def _check_out_dir(out: Path, args: argparse.Namespace) -> None:
    """Refuse to replace checkpoints silently; ``--stage diffusion`` builds on an existing autoencoder."""
    produced = (DIFFUSION_FILE,) if args.stage == "diffusion" else (AUTOENCODER_FILE, DIFFUSION_FILE)
    existing = [f for f in produced if (out / f).exists()]
    if existing and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}; pass --resume to continue that run, "
            f"--overwrite to replace it, or choose another --out"
        )
    if args.stage == "diffusion" and not (out / AUTOENCODER_FILE).exists():
        raise FileNotFoundError(f"--stage diffusion needs a trained {out / AUTOENCODER_FILE}")


def _check_resumable(out: Path, config: RunConfig, denoiser: bool) -> None:
    """The checkpoints the run continues (the autoencoder's, and with ``denoiser`` the denoiser's) load and
    hold its settings: checked before anything is written. A denoiser of another autoencoder is left over
    from a replaced run: not continued, and removed once the autoencoder stage is done."""
    ae_path, diff_path = out / AUTOENCODER_FILE, out / DIFFUSION_FILE
    if not ae_path.exists():
        return
    ae = load_checkpoint(ae_path, "autoencoder", ("model", "complete"))
    require_settings(ae_path, ae["config"], autoencoder_stage_config(config))
    if denoiser and ae["complete"] and diff_path.exists():
        diff = load_checkpoint(diff_path, "diffusion")
        digest = weights_digest(ae["model"])
        if diff.get(AUTOENCODER_DIGEST, digest) == digest:
            require_settings(diff_path, diff["config"], diffusion_stage_config(config))


def _write_config(path: Path, config: RunConfig) -> None:
    """Write ``config`` to ``path`` unless the file already holds exactly it (a resumed run)."""
    data = to_dict(config)
    if not (path.is_file() and path.read_text() == yaml.safe_dump(data, sort_keys=False)):
        save_yaml(path, data)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out: Path = args.out
    progress = not args.no_progress and sys.stderr.isatty()
    with clear_errors():  # every refusal before anything in --out changes
        check_device(args.device)
        check_output_dir(out)
        stored = _stored_config(out) if args.resume else None
        layers = settings_layers(args)  # the --config file is read once
        config = build_config(args, stored, layers)
        data = load_data(config)
        config = config.resolve(data, chosen_settings(layers))  # what config.yaml and the checkpoints hold
        _check_settings(config)
        if stored is not None:
            _check_resumed_settings(stored.resolve(data), config, out)
        log = TrainingLog(out, console=not (progress and sys.stdout.isatty()), tensorboard=args.log == "tensorboard")
    ctx = distributed_context(args.device)
    started = time.perf_counter()
    with ExitStack() as stack, clear_errors():
        if ctx.is_main:
            stack.enter_context(exclusive_lock(out, folder=True))  # held until training ends
            _check_out_dir(out, args)
            if args.resume or args.stage == "diffusion":
                _check_resumable(out, config, denoiser=args.resume)
            _write_config(out / CONFIG_FILE, config)
        # --stage diffusion builds on the autoencoder already in --out (reloaded, or finished if interrupted).
        autoencoder, ae_history = train_autoencoder(
            config, data, out, ctx, resume=args.resume or args.stage == "diffusion", compile=args.compile,
            progress=progress, log=log,
        )
        report = {"autoencoder": ae_history[-1] if ae_history else {}}
        if ctx.is_main:
            for path in remove_stale(out, autoencoder):
                print(f"removed {path}: it was trained on the autoencoder this run replaced", file=sys.stderr)
            quality = autoencoder_report(autoencoder, data, ctx.device, seed=config.seed)
            write_json(quality, out / AUTOENCODER_REPORT_FILE)
            print(format_report(quality), flush=True)
            if config.spike_history.enabled:
                _, losses = fit_spike_history(autoencoder, data, out, ctx.device, config.spike_history)
                report["spike_history"] = {"nll": losses[-1]}
        if ctx.world_size > 1:
            dist.barrier()  # the other ranks resume the denoiser only after stale checkpoints are gone
        if args.stage != "autoencoder":
            _, diffusion_history = train_diffusion(config, autoencoder, data, out, ctx, resume=args.resume,
                                                   compile=args.compile, progress=progress, log=log)
            report["diffusion"] = diffusion_history[-1] if diffusion_history else {}
    if ctx.is_main:
        minutes = (time.perf_counter() - started) / 60
        print(f"trained in {minutes:.1f} min; final losses: {report}; checkpoints in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
