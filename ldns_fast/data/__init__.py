"""Data layer: the HDF5 spike-count format, the synthetic Lorenz dataset and training tensors.

- :func:`write_dataset`, :func:`read_dataset`: atomic validating writer and validating reader of the
  file format (``docs/data_format.md``); violations raise :class:`DataFormatError`.
- :class:`SpikeData`: a dataset in file layout (numpy ``[trials, time, neurons]``), with
  ``split("train" | "val" | "test")``.
- :class:`LorenzConfig`, :func:`simulate_lorenz`, :func:`load_lorenz`: the embedded Lorenz dataset,
  generated once and cached (``$LDNS_FAST_CACHE`` or ``~/.cache/ldns_fast``).
- :class:`ReachConfig`, :func:`simulate_reach`, :func:`write_reach`: a synthetic reach-like dataset with
  directions as ``conditions`` and hand velocity as ``behavior``.
- :func:`read_nwb`: bin the spike times of an NWB file (optional extra ``nwb``, ``pynwb`` imported on
  use) into trials, with behaviour time series and trials-table conditions.
- :func:`to_tensors`, :class:`SpikeTensors`, :class:`SpikeDataset`: torch tensors in the model layout
  ``[trials, channels, time]`` with a validity mask.
"""
from .dataset import SpikeDataset, SpikeTensors, to_tensors, valid_mask
from .hdf5 import (
    SPLIT_CODES,
    DataFormatError,
    SpikeData,
    pad_trials,
    random_split,
    read_dataset,
    validate_arrays,
    write_dataset,
)
from .lorenz import LorenzConfig, LorenzSample, default_cache_dir, load_lorenz, simulate_lorenz
from .nwb import read_nwb
from .reach import ReachConfig, ReachSample, simulate_reach, write_reach

__all__ = [
    "SPLIT_CODES",
    "DataFormatError",
    "LorenzConfig",
    "LorenzSample",
    "ReachConfig",
    "ReachSample",
    "SpikeData",
    "SpikeDataset",
    "SpikeTensors",
    "default_cache_dir",
    "load_lorenz",
    "pad_trials",
    "random_split",
    "read_dataset",
    "read_nwb",
    "simulate_lorenz",
    "simulate_reach",
    "to_tensors",
    "valid_mask",
    "validate_arrays",
    "write_dataset",
    "write_reach",
]
