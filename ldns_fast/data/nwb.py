"""Read NWB recordings (units' spike times) as binned trials in the dataset format (needs ``pynwb``).

:func:`read_nwb` bins the spike times of the file's units table into ``spikes [n, T, N]`` counts:

- trials from the trials table, each from ``start_time`` to ``stop_time`` (variable lengths, recorded in
  ``lengths`` with zero padding; a trial whose duration is not a whole number of bins ends in a shorter
  bin that stops at ``stop_time``),
- or windows ``align + window`` around a trials-table column (e.g. ``go_cue_time``), all of one length,
- or, with ``window_length``, consecutive windows over the whole recording from time 0 to the last spike
  (for files without a trials table; the last window may be shorter).

Bins are half-open ``[left, right)``. Behaviour time series are linearly interpolated at the bin centres
(``behavior [n, T, B]``), numeric trials-table columns become ``conditions [n, C]``. Every problem with
the file raises :class:`~ldns_fast.data.hdf5.DataFormatError` naming it; bad arguments raise
``ValueError`` before the file is opened.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from .hdf5 import DataFormatError, SpikeData, random_split

_BIN_TOLERANCE = 1e-6  # fraction of a bin below which a trial's remainder gets no bin of its own


def _import_pynwb() -> Any:
    try:
        import pynwb
    except ImportError as err:
        raise ImportError('reading NWB files needs pynwb: pip install "ldns_fast[nwb]"') from err
    return pynwb


def _check_arguments(bin_width: float, align: str | None, window: tuple[float, float] | None,
                     window_length: float | None, conditions: Sequence[str], units: Sequence[int] | None) -> None:
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a positive number of seconds, got {bin_width}")
    if (align is None) != (window is None):
        raise ValueError("align and window go together: window=(before, after) seconds around the align column")
    if window is not None:
        if len(window) != 2 or not all(math.isfinite(w) for w in window) or window[1] <= window[0]:
            raise ValueError(f"window must be (before, after) seconds with before < after, got {window}")
    if window_length is not None:
        if not (math.isfinite(window_length) and window_length > 0):
            raise ValueError(f"window_length must be a positive number of seconds, got {window_length}")
        if abs(window_length / bin_width - round(window_length / bin_width)) > _BIN_TOLERANCE:
            raise ValueError(f"window_length ({window_length} s) must be a whole number of bins of {bin_width} s")
        if align is not None or conditions:
            raise ValueError("window_length (consecutive windows) cannot be combined with align or conditions, "
                             "which need the trials table")
    if units is not None and len(set(units)) != len(units):
        raise ValueError(f"unit ids must not repeat, got {list(units)}")


def _open_check(source: str) -> None:
    """The file exists, is HDF5 and carries the NWB version attribute."""
    if not os.path.isfile(source):
        raise DataFormatError(f"{source}: no such file")
    if not h5py.is_hdf5(source):
        raise DataFormatError(f"{source}: not an NWB file (not HDF5)")
    with h5py.File(source, "r") as f:
        if "nwb_version" not in f.attrs:
            raise DataFormatError(f"{source}: not an NWB file (HDF5 without the 'nwb_version' attribute)")


def _n_bins(duration: np.ndarray, bin_width: float) -> np.ndarray:
    """Bins covering each duration (at least one), the last one possibly shorter (int64, same shape)."""
    return np.maximum(1, np.ceil(duration / bin_width - _BIN_TOLERANCE)).astype(np.int64)


def _bin_edges(starts: np.ndarray, stops: np.ndarray, n_bins: np.ndarray,
               bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right bin edges ``[n, T]``: bins of ``bin_width`` from ``starts``, the last ending at ``stops``;
    padding bins past ``n_bins`` are empty (left == right == stop). Neighbouring bins share their edge."""
    k = np.arange(int(n_bins.max()) + 1)[None, :]
    grid = np.where(k < n_bins[:, None], starts[:, None] + k * bin_width, stops[:, None])
    return grid[:, :-1], grid[:, 1:]


def _trials_column(trials: Any, name: str, source: str) -> np.ndarray:
    """A numeric, non-ragged trials-table column ``[n, ...]`` as float64."""
    if name not in trials.colnames:
        raise DataFormatError(f"{source}: the trials table has no column {name!r}; columns: "
                              f"{', '.join(trials.colnames)}")
    column = trials[name]
    if column.name != name:  # a ragged column comes back as its index
        raise DataFormatError(f"{source}: trials column {name!r} is ragged (several values per trial)")
    values = np.asarray(column.data[:])
    if values.dtype.kind not in "iuf":
        raise DataFormatError(f"{source}: trials column {name!r} must be numeric, got dtype {values.dtype}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        raise DataFormatError(f"{source}: trials column {name!r} is NaN or inf at trial {int(bad.argmax())}")
    return values


def _trial_intervals(nwbfile: Any, source: str, bin_width: float, align: str | None,
                     window: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Trial ``starts``, ``stops``, ``n_bins`` ``[n]`` from the trials table and a description."""
    trials = nwbfile.trials
    if trials is None:
        raise DataFormatError(f"{source}: no trials table; pass window_length (--window-length) to cut the "
                              "recording into consecutive windows")
    if len(trials) == 0:
        raise DataFormatError(f"{source}: the trials table is empty")
    if align is not None:
        before, after = window
        anchor = _trials_column(trials, align, source)
        if anchor.ndim != 1:
            raise DataFormatError(f"{source}: trials column {align!r} must hold one time per trial")
        n_bins = np.full(len(anchor), _n_bins(np.float64(after - before), bin_width))
        return anchor + before, anchor + after, n_bins, f"windows [{before}, {after}] s around {align}"
    starts = _trials_column(trials, "start_time", source)
    stops = _trials_column(trials, "stop_time", source)
    bad = ~(stops > starts)
    if bad.any():
        trial = int(bad.argmax())
        raise DataFormatError(f"{source}: trial {trial} has stop_time {stops[trial]} <= start_time {starts[trial]}")
    return starts, stops, _n_bins(stops - starts, bin_width), "trials start_time to stop_time"


def _consecutive_windows(end: float, bin_width: float,
                         window_length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Windows of ``window_length`` over ``[0, end]`` on one grid of bins; the last window may be shorter."""
    total = int(end // bin_width) + 1  # the bin holding ``end`` is the last one
    if total * bin_width <= end:  # the floor division rounded down across a bin edge
        total += 1
    per_window = round(window_length / bin_width)
    first_bin = np.arange(0, total, per_window)
    n_bins = np.minimum(per_window, total - first_bin)
    starts, stops = first_bin * bin_width, (first_bin + n_bins) * bin_width  # a window stops where the next starts
    return starts, stops, n_bins, f"consecutive {window_length} s windows from 0 s"


def _spike_times(nwbfile: Any, source: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Sorted spike times of every unit and the unit ids ``[units]``."""
    table = nwbfile.units
    if table is None or len(table) == 0:
        raise DataFormatError(f"{source}: no units table (spike-sorted units are needed)")
    if "spike_times" not in table.colnames:
        raise DataFormatError(f"{source}: the units table has no 'spike_times' column")
    index = table["spike_times"]  # ragged: VectorIndex over the flat times
    ends = np.asarray(index.data[:], dtype=np.int64)
    times = np.asarray(index.target.data[:], dtype=np.float64)
    starts = np.concatenate([[0], ends[:-1]])
    return [np.sort(times[a:b]) for a, b in zip(starts, ends)], np.asarray(table.id.data[:])


def _select_units(ids: np.ndarray, units: Sequence[int] | None, source: str) -> np.ndarray:
    """Rows of the units table holding ``units`` (in that order; all rows for None)."""
    if units is None:
        return np.arange(len(ids))
    row_of = {int(i): row for row, i in enumerate(ids)}
    unknown = [u for u in units if int(u) not in row_of]
    if unknown:
        raise DataFormatError(f"{source}: unknown unit ids {unknown}; the units table holds "
                              f"{len(ids)} units with ids {ids.min()}..{ids.max()}")
    return np.array([row_of[int(u)] for u in units], dtype=np.int64)


def _bin_counts(spike_times: list[np.ndarray], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Counts ``[n, T, N]`` of spikes in ``[left, right)`` per unit (one searchsorted per unit)."""
    edges = np.concatenate([left.ravel(), right.ravel()])
    counts = np.empty((*left.shape, len(spike_times)), dtype=np.int64)
    for u, times in enumerate(spike_times):
        below = np.searchsorted(times, edges, side="left")  # spikes before each edge
        counts[..., u] = (below[left.size:] - below[: left.size]).reshape(left.shape)
    return counts


def _time_series(nwbfile: Any, pynwb: Any) -> Iterator[tuple[str, Any]]:
    """Every TimeSeries (SpatialSeries included) in acquisition and processing modules, with its path."""
    stack = [(f"acquisition/{name}", c) for name, c in nwbfile.acquisition.items()]
    stack += [(f"processing/{name}", c) for name, c in nwbfile.processing.items()]
    while stack:
        path, container = stack.pop()
        if isinstance(container, pynwb.TimeSeries):
            yield path, container
        else:
            stack.extend((f"{path}/{child.name}", child) for child in getattr(container, "children", ()))


def _find_series(nwbfile: Any, pynwb: Any, name: str, source: str) -> tuple[str, Any]:
    """The one TimeSeries called ``name`` (or at path ``name``, e.g. ``processing/behavior/hand_velocity``)."""
    found = sorted(_time_series(nwbfile, pynwb), key=lambda item: item[0])
    matches = [(path, s) for path, s in found if name in (s.name, path)]
    if not matches:
        available = ", ".join(path for path, _ in found) or "none"
        raise DataFormatError(f"{source}: no behaviour time series {name!r}; available: {available}")
    if len(matches) > 1:
        raise DataFormatError(f"{source}: several time series are called {name!r} "
                              f"({', '.join(p for p, _ in matches)}); pass one of these paths")
    return matches[0]


def _resample(series: Any, label: str, source: str, centres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The series interpolated at the valid bin ``centres`` ``[n, T]``: ``[n, T, B]``, zero on padding."""
    times = np.asarray(series.get_timestamps(), dtype=np.float64)
    values = np.asarray(series.get_data_in_units(), dtype=np.float64)
    values = values.reshape(len(values), -1)
    if len(times) != len(values) or len(times) < 2 or np.any(np.diff(times) <= 0):
        raise DataFormatError(f"{source}: behaviour {label!r} needs >= 2 samples with strictly increasing "
                              f"timestamps, one per sample (got {len(times)} timestamps, {len(values)} samples)")
    n_bins = valid.sum(axis=1)
    first, last = centres[:, 0], centres[np.arange(len(centres)), n_bins - 1]
    outside = (first < times[0]) | (last > times[-1])
    if outside.any():
        trial = int(outside.argmax())
        raise DataFormatError(f"{source}: behaviour {label!r} spans {times[0]}..{times[-1]} s but trial {trial} "
                              f"needs bin centres {first[trial]}..{last[trial]} s")
    query = centres[valid]
    resampled = np.zeros((*centres.shape, values.shape[1]))
    resampled[valid] = np.stack([np.interp(query, times, column) for column in values.T], axis=-1)
    bad = ~np.isfinite(resampled).all(axis=(1, 2))
    if bad.any():
        raise DataFormatError(f"{source}: behaviour {label!r} is NaN or inf around trial {int(bad.argmax())}")
    return resampled


def read_nwb(
    path: str | os.PathLike,
    *,
    bin_width: float,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    window_length: float | None = None,
    behavior: Sequence[str] = (),
    conditions: Sequence[str] = (),
    units: Sequence[int] | None = None,
) -> SpikeData:
    """Bin an NWB file's spike times into a :class:`SpikeData` (trials as in the module docstring).

    Args:
        path: the NWB (HDF5) file.
        bin_width: seconds per bin.
        align, window: a trials-table column of times and ``(before, after)`` seconds around it; without
            them trials span ``start_time`` to ``stop_time``.
        window_length: seconds per window when cutting the whole recording (ignores any trials table).
        behavior: names (or paths such as ``processing/behavior/hand_velocity``) of TimeSeries /
            SpatialSeries in acquisition or processing modules, resampled to ``behavior [n, T, B]``
            (their columns side by side, in the order given; values in the series' units).
        conditions: numeric trials-table columns -> ``conditions [n, C]``.
        units: unit ids to keep, in this order (default: all units, table order).

    Returns:
        ``spikes [n, T, N]`` (smallest unsigned integer dtype), ``lengths [n]``, optional ``behavior``
        and ``conditions`` (float64), the default seeded split and a description of source and options.

    Raises:
        ImportError: pynwb is not installed.
        ValueError: invalid arguments; :class:`DataFormatError` for problems with the file.
    """
    bin_width = float(bin_width)
    _check_arguments(bin_width, align, window, window_length, conditions, units)
    pynwb = _import_pynwb()
    source = str(path)
    _open_check(source)
    with pynwb.NWBHDF5IO(source, "r") as io:
        try:
            nwbfile = io.read()
        except Exception as err:  # hdmf raises many types for files it cannot build
            raise DataFormatError(f"{source}: cannot be read as NWB: {err}") from err
        all_times, all_ids = _spike_times(nwbfile, source)
        rows = _select_units(all_ids, units, source)
        if window_length is None:
            starts, stops, n_bins, layout = _trial_intervals(nwbfile, source, bin_width, align, window)
        else:
            last = max((t[-1] for t in all_times if len(t)), default=None)
            if last is None:
                raise DataFormatError(f"{source}: the units hold no spike times to span the recording")
            starts, stops, n_bins, layout = _consecutive_windows(last, bin_width, window_length)
        left, right = _bin_edges(starts, stops, n_bins, bin_width)
        counts = _bin_counts([all_times[r] for r in rows], left, right)
        valid = np.arange(left.shape[1])[None, :] < n_bins[:, None]
        centres = (left + right) / 2
        found = [_find_series(nwbfile, pynwb, name, source) for name in behavior]
        behaviour = [_resample(series, name, source, centres, valid) for name, (_, series) in zip(behavior, found)]
        condition_values = [_trials_column(nwbfile.trials, c, source).reshape(len(starts), -1) for c in conditions]
        series_text = ", ".join(f"{p} [{s.unit}]" for p, s in found)
    chosen = "all units" if units is None else f"units {[int(u) for u in units]}"
    notes = [layout, f"{chosen} ({len(rows)})"]
    notes += [f"behavior at bin centres: {series_text}"] if behavior else []
    notes += [f"conditions: {', '.join(conditions)}"] if conditions else []
    return SpikeData(
        spikes=counts.astype(np.min_scalar_type(counts.max())),
        bin_width=bin_width,
        lengths=n_bins,
        split_codes=random_split(len(n_bins)),
        behavior=np.concatenate(behaviour, axis=2) if behaviour else None,
        conditions=np.concatenate(condition_values, axis=1) if conditions else None,
        description=f"from NWB {Path(source).name}, {bin_width} s bins; " + "; ".join(notes),
    )
