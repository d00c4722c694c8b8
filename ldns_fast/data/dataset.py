"""Training tensors in the model layout (channels before time)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .hdf5 import SpikeData


@dataclass
class SpikeTensors:
    """A dataset as torch tensors, channels first; every time-indexed tensor is zero past ``lengths``.

    Attributes:
        spikes: float ``[trials, neurons, time]``.
        mask: float ``[trials, time]``, 1 on valid bins, 0 on padding.
        lengths: int64 ``[trials]``.
        behavior: float ``[trials, B, time]`` or None.
        conditions: float ``[trials, C]`` or None.
        rates: float ``[trials, neurons, time]`` or None (true rates of synthetic data).
        latents: float ``[trials, D, time]`` or None.
    """

    spikes: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    behavior: torch.Tensor | None = None
    conditions: torch.Tensor | None = None
    rates: torch.Tensor | None = None
    latents: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.spikes.shape[0]

    def trial(self, index: int) -> dict[str, torch.Tensor]:
        """One trial as a dict of the present fields (``lengths`` becomes the scalar ``length``)."""
        present = {f.name: getattr(self, f.name) for f in fields(self)}
        item = {name: value[index] for name, value in present.items() if value is not None}
        item["length"] = item.pop("lengths")
        return item


def _channels_first(a: np.ndarray | None, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``[n, T, K]`` numpy -> new ``[n, K, T]`` tensor with padding zeroed."""
    if a is None:
        return None
    n, t, k = a.shape
    out = torch.empty((n, k, t), dtype=dtype)
    out.copy_(torch.from_numpy(np.asarray(a)).permute(0, 2, 1))
    return out.mul_(mask[:, None, :])


def valid_mask(lengths: torch.Tensor, n_bins: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[trials, n_bins]`` on ``lengths``' device: 1 where the bin index is below the trial's length."""
    return (torch.arange(n_bins, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def to_tensors(data: SpikeData, dtype: torch.dtype = torch.float32) -> SpikeTensors:
    """Copy file-layout arrays ``[n, T, K]`` into new model-layout tensors ``[n, K, T]`` of ``dtype``."""
    lengths = torch.tensor(data.lengths, dtype=torch.int64)
    mask = valid_mask(lengths, data.n_bins, dtype)
    conditions = None if data.conditions is None else torch.tensor(data.conditions, dtype=dtype)
    return SpikeTensors(
        spikes=_channels_first(data.spikes, mask, dtype),
        mask=mask,
        lengths=lengths,
        behavior=_channels_first(data.behavior, mask, dtype),
        conditions=conditions,
        rates=_channels_first(data.rates, mask, dtype),
        latents=_channels_first(data.latents, mask, dtype),
    )
