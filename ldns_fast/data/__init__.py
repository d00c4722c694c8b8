"""Data layer: the HDF5 spike-count format, the synthetic Lorenz dataset and training tensors.

- :func:`write_dataset`, :func:`read_dataset`: atomic validating writer and validating reader of the
  file format (``docs/data_format.md``); violations raise :class:`DataFormatError`.
  :class:`DatasetWriter` writes generated trials batch by batch (long recordings, bounded memory).
- :class:`SpikeData`: a dataset in file layout (numpy ``[trials, time, neurons]``), with
  ``split("train" | "val" | "test")``.
- :class:`LorenzConfig`, :func:`simulate_lorenz`, :func:`load_lorenz`: the embedded Lorenz dataset,
  generated once and cached (``$LDNS_FAST_CACHE`` or ``~/.cache/ldns_fast``).
- :class:`ReachConfig`, :func:`simulate_reach`, :func:`write_reach`: a synthetic reach-like dataset with
  directions as ``conditions`` and hand velocity as ``behavior``.
- :class:`NetworkReachConfig`, :func:`simulate_network_reach`, :func:`write_network_reach`: reach data
  from a recurrent E/I network of leaky integrate-and-fire neurons (refractoriness, coupling, tuned
  drive), independent validation data that breaks the models' assumptions.
- :func:`read_nwb`: bin the spike times of an NWB file (optional extra ``nwb``, ``pynwb`` imported on
  use) into trials, with behaviour time series and trials-table conditions.
- :func:`to_tensors`, :class:`SpikeTensors`: torch tensors in the model layout ``[trials, channels, time]``
  with a validity mask.

Names are imported from their submodules on first use, so the file format works without torch.
"""
import importlib

# Names and the submodule holding each, imported on first use: the HDF5 format needs no torch.
_HOMES = {
    "SpikeTensors": "dataset", "to_tensors": "dataset", "valid_mask": "dataset",
    "SPLIT_CODES": "hdf5", "DataFormatError": "hdf5", "DatasetWriter": "hdf5", "SpikeData": "hdf5",
    "pad_trials": "hdf5", "random_split": "hdf5", "read_dataset": "hdf5", "validate_arrays": "hdf5",
    "write_dataset": "hdf5",
    "LorenzConfig": "lorenz", "LorenzSample": "lorenz", "default_cache_dir": "lorenz", "load_lorenz": "lorenz",
    "simulate_lorenz": "lorenz",
    "NetworkReachConfig": "network", "NetworkReachSample": "network", "simulate_network_reach": "network",
    "write_network_reach": "network",
    "read_nwb": "nwb",
    "ReachConfig": "reach", "ReachSample": "reach", "simulate_reach": "reach", "write_reach": "reach",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = [
    "SPLIT_CODES",
    "DataFormatError",
    "DatasetWriter",
    "LorenzConfig",
    "LorenzSample",
    "NetworkReachConfig",
    "NetworkReachSample",
    "ReachConfig",
    "ReachSample",
    "SpikeData",
    "SpikeTensors",
    "default_cache_dir",
    "load_lorenz",
    "pad_trials",
    "random_split",
    "read_dataset",
    "read_nwb",
    "simulate_lorenz",
    "simulate_network_reach",
    "simulate_reach",
    "to_tensors",
    "valid_mask",
    "validate_arrays",
    "write_dataset",
    "write_network_reach",
    "write_reach",
]
