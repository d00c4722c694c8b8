"""A training run as a folder: its file names, its data, and what inference reads back from it.

Training (:mod:`ldns_fast.training`) writes these files; :mod:`ldns_fast.pipeline`, :mod:`ldns_fast.evaluate`,
:mod:`ldns_fast.quality` and the export read them through this module, never through the training code.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldns_fast.config import RunConfig
from ldns_fast.data import SpikeData, load_lorenz, read_dataset, to_tensors

AUTOENCODER_FILE = "autoencoder.pt"
DIFFUSION_FILE = "diffusion.pt"
AUTOENCODER_REPORT_FILE = "autoencoder_report.json"
SPIKE_HISTORY_FILE = "spike_history.pt"
METRICS_FILE = "metrics.csv"
# The autoencoder a denoiser or spike-history model was trained on: weights_digest of its state dict.
AUTOENCODER_DIGEST = "autoencoder_sha256"

# A split's trials as tensors: "spikes" [n, N, T], "mask" [n, T], and "cond" [n, C] / "behavior" [n, B, T].
Batch = dict[str, torch.Tensor]


@dataclass
class LatentStats:
    """Per-channel ``mean`` and ``std [C]`` by which the denoiser's latents are z-scored (measured on the
    training split's latents, stored in ``diffusion.pt``)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def measure(cls, latents: torch.Tensor, mask: torch.Tensor) -> LatentStats:
        """The statistics of ``latents [n, C, T]`` over the valid bins of ``mask [n, T]`` (std at least 1e-6)."""
        weight = mask[:, None, :].to(latents.dtype)
        count = weight.sum((0, 2)).clamp_min(1)
        mean = (latents * weight).sum((0, 2)) / count
        var = ((latents - mean[None, :, None]).square() * weight).sum((0, 2)) / count
        return cls(mean, var.sqrt().clamp_min(1e-6))

    def normalise(self, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z-scored ``latents [n, C, T]``; zero where ``mask [n, T]`` is."""
        return (latents - self.mean[None, :, None]) / self.std[None, :, None] * mask[:, None, :]

    def denormalise(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latents ``[n, C, T]`` from the denoiser's ``z``; zero where ``mask [n, T]`` is."""
        return (z * self.std[:, None] + self.mean[:, None]) * mask[:, None]


def load_data(run: RunConfig) -> SpikeData:
    """The run's dataset: the cached Lorenz preset or a user HDF5 file (validated on read)."""
    source = run.data.source
    if source == "lorenz":
        source = load_lorenz(run.data.lorenz)
    return read_dataset(source)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def spike_batches(data: SpikeData, split: str) -> Batch | None:
    """``{"spikes": [n, N, T], "mask": [n, T]}`` plus ``"cond" [n, C]`` and ``"behavior" [n, B, T]`` when
    the data hold them, for one split (None when the split is empty)."""
    part = data.split(split)
    if part.n_trials == 0:
        return None
    tensors = to_tensors(part)
    batch = {"spikes": tensors.spikes, "mask": tensors.mask}
    if tensors.conditions is not None:
        batch["cond"] = tensors.conditions
    if tensors.behavior is not None:
        batch["behavior"] = tensors.behavior
    return batch


@torch.no_grad()
def encode_all(model: torch.nn.Module, batch: Batch, batch_size: int, device: torch.device) -> torch.Tensor:
    """Latents ``[n, C_latent, T]`` of every trial in ``batch`` by an autoencoder (eval mode, zero on padding)."""
    model.eval()
    out = []
    for start in range(0, batch["spikes"].shape[0], batch_size):
        spikes = batch["spikes"][start : start + batch_size].to(device)
        mask = batch["mask"][start : start + batch_size].to(device)
        out.append(model.encode(spikes, mask).cpu())
    return torch.cat(out)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv``: ``stage`` a string, ``epoch`` and ``step`` ints, the rest floats
    (empty cells left out)."""
    with open(path, newline="") as f:
        return [_parse(row) for row in csv.DictReader(f)]


def _parse(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, text in row.items():
        if text in ("", None):
            continue
        out[key] = text if key == "stage" else int(text) if key in ("epoch", "step") else float(text)
    return out
