"""Atomic, pickle-free checkpoints: a torch file of tensors and plain values, its config inside.

``save_checkpoint(path, kind, payload, config)`` writes ``path`` (a ``torch.save`` of a dict holding
only tensors, numbers, strings, lists and dicts) to a temporary file in the same folder that is fsynced
and renamed over the target, so a crash never leaves a half-written checkpoint. A training run's
settings live in one place, its ``config.yaml`` (no YAML copy beside each checkpoint to drift from it). ``load_checkpoint`` reads with ``torch.load(weights_only=True)`` and turns any
failure into a :class:`CheckpointError` that names the file.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from ldns_fast.atomic import atomic_write

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or of the wrong kind."""


def versions() -> dict[str, str]:
    """Versions of the software that wrote a checkpoint."""
    from ldns_fast import __version__

    return {"ldns_fast": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_yaml(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Atomically write ``data`` as YAML."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)

    return atomic_write(path, write)


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any], config: dict[str, Any]) -> Path:
    """Atomically write a checkpoint of ``kind`` (e.g. ``"autoencoder"``) holding its ``config``."""
    record = {"format": FORMAT_VERSION, "kind": kind, "versions": versions(), "config": config, **payload}
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def load_checkpoint(
    path: str | os.PathLike, kind: str, required: tuple[str, ...] = (), map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, checking its kind and ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not an ldns_fast checkpoint: {err}") from err
    if not isinstance(record, dict) or "format" not in record or "kind" not in record:
        raise CheckpointError(f"checkpoint {path} is not an ldns_fast checkpoint (no format/kind header)")
    if record["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {record['format']}, this version reads {FORMAT_VERSION}")
    if record["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {record['kind']!r}, expected a {kind!r}")
    missing = [k for k in ("config", *required) if k not in record]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the keys {missing}")
    return record


def require_finite(path: str | os.PathLike, values: dict[str, Any], where: str = "") -> None:
    """Raise a CheckpointError naming ``path`` and the key of the first tensor in ``values`` (nested
    dicts) that holds NaN or infinite values: such weights or statistics can only produce garbage."""
    for key, value in values.items():
        name = f"{where}{key}"
        if isinstance(value, dict):
            require_finite(path, value, f"{name}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {path}: {name} holds NaN or infinite values")
