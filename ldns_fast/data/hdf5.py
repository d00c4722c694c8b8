"""The HDF5 file format for binned spike counts: a validating writer and reader.

One file holds one dataset of ``n`` trials, ``T`` time bins and ``N`` neurons (full description in
``docs/data_format.md``):

- ``spikes`` ``[n, T, N]``: non-negative integer counts (any integer or float dtype holding integers).
- ``lengths`` ``[n]`` (optional): valid bins per trial in ``[1, T]``; later bins are zero padding.
- ``behavior`` ``[n, T, B]``, ``conditions`` ``[n, C]``, ``rates`` ``[n, T, N]``,
  ``latents`` ``[n, T, D]`` (all optional, finite floats; rates non-negative).
- ``split`` ``[n]`` (optional): 0 train, 1 val, 2 test; absent -> a seeded 70/10/20 split.
- root attributes ``bin_width`` (seconds, required) and ``description`` (optional).

Every violation raises :class:`DataFormatError` naming the file and the key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ldns_fast.atomic import atomic_path, atomic_write
from ldns_fast.validation import check_bin_width, is_integer

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
DEFAULT_SPLIT_SEED = 0
# Counts of generated trials (DatasetWriter, LDNS samples); metrics.MAX_COUNT is the same limit.
COUNT_DTYPE = np.uint16
ARRAY_KEYS = ("spikes", "lengths", "behavior", "conditions", "rates", "latents", "split")
_OPTIONAL_FLOAT_LAYOUTS: dict[str, tuple[int, str]] = {
    "behavior": (3, "[trials, time, B]"),
    "conditions": (2, "[trials, C]"),
    "rates": (3, "[trials, time, neurons]"),
    "latents": (3, "[trials, time, D]"),
}


class DataFormatError(ValueError):
    """A spike data file or array that breaks the format; the message names the file and the key."""


@dataclass
class SpikeData:
    """A dataset in file layout (numpy, time before neurons).

    Attributes:
        spikes: counts ``[n, T, N]`` (dtype as stored).
        bin_width: seconds per bin.
        lengths: valid bins per trial, int64 ``[n]`` (``T`` for every trial when the file has none).
        split_codes: uint8 ``[n]``, 0 train / 1 val / 2 test.
        behavior, conditions, rates, latents: ``[n, T, B]``, ``[n, C]``, ``[n, T, N]``, ``[n, T, D]``
            or None.
        description: free text.
        path: the file it was read from, if any.
    """

    spikes: np.ndarray
    bin_width: float
    lengths: np.ndarray
    split_codes: np.ndarray
    behavior: np.ndarray | None = None
    conditions: np.ndarray | None = None
    rates: np.ndarray | None = None
    latents: np.ndarray | None = None
    description: str = ""
    path: str | None = None

    @property
    def n_trials(self) -> int:
        return self.spikes.shape[0]

    @property
    def n_bins(self) -> int:
        return self.spikes.shape[1]

    @property
    def n_neurons(self) -> int:
        return self.spikes.shape[2]

    def subset(self, index: np.ndarray | Sequence[int]) -> SpikeData:
        """The trials at ``index`` (integer indices or a boolean mask over trials), as copies."""
        index = np.asarray(index)
        per_trial = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return replace(self, **per_trial)

    def split(self, name: str) -> SpikeData:
        """The ``"train"``, ``"val"`` or ``"test"`` trials."""
        if name not in SPLIT_CODES:
            raise ValueError(f"split name must be one of {sorted(SPLIT_CODES)}, got {name!r}")
        return self.subset(self.split_codes == SPLIT_CODES[name])


def random_split(
    n_trials: int,
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> np.ndarray:
    """Seeded random split codes, uint8 ``[n_trials]``; val and test sizes are rounded, train gets the rest.

    Raises:
        ValueError: ``fractions`` are not 3 non-negative numbers summing to 1.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n_val = round(fractions[1] * n_trials)
    n_test = round(fractions[2] * n_trials)
    codes = np.zeros(n_trials, dtype=np.uint8)
    codes[n_trials - n_val - n_test : n_trials - n_test] = SPLIT_CODES["val"]
    codes[n_trials - n_test :] = SPLIT_CODES["test"]
    return codes[np.random.default_rng(seed).permutation(n_trials)]


def pad_trials(trials: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad variable-length trials ``[T_i, ...]`` to ``[n, max T_i, ...]``; returns (padded, lengths)."""
    if not trials:
        raise ValueError("pad_trials needs at least one trial")
    arrays = [np.asarray(t) for t in trials]
    tails = {a.shape[1:] for a in arrays}
    if len(tails) != 1:
        raise ValueError(f"trials differ in their trailing shape: {sorted(tails)}")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    padded = np.zeros((len(arrays), int(lengths.max()), *tails.pop()), dtype=np.result_type(*arrays))
    for i, a in enumerate(arrays):
        padded[i, : a.shape[0]] = a
    return padded, lengths


# ----------------------------------------------------------------------------------------- validation


def _fail(source: str, key: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{source}: {key!r} {problem}")


def _first_trial(bad: np.ndarray) -> int | None:
    """Index of the first trial (axis 0) with any True entry, or None."""
    per_trial = bad.reshape(bad.shape[0], -1).any(axis=1)
    return int(per_trial.argmax()) if per_trial.any() else None


def _check_layout(source: str, key: str, a: np.ndarray, ndim: int, layout: str) -> None:
    if a.dtype.kind not in "iuf":
        raise _fail(source, key, f"must hold integers or floats, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise _fail(source, key, f"must be {ndim}-D {layout}, got shape {a.shape}")


def _check_leading(source: str, key: str, a: np.ndarray, expected: tuple[int, ...]) -> None:
    if a.shape[: len(expected)] != expected:
        problem = f"has shape {a.shape}; its leading dimensions must be {expected} (see 'spikes')"
        raise _fail(source, key, problem)


def _check_finite(source: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f":
        trial = _first_trial(~np.isfinite(a))
        if trial is not None:
            raise _fail(source, key, f"contains NaN or inf (first at trial {trial})")


def _check_integer_valued(source: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f":
        trial = _first_trial(a != np.round(a))
        if trial is not None:
            raise _fail(source, key, f"must hold integers, got a fraction at trial {trial}")


def _check_non_negative(source: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "u":
        trial = _first_trial(a < 0)
        if trial is not None:
            raise _fail(source, key, f"must be non-negative, got a negative value at trial {trial}")


def _check_per_trial(source: str, key: str, a: np.ndarray, n: int) -> None:
    """A finite, integer-valued ``[n]`` vector (``lengths``, ``split``)."""
    _check_layout(source, key, a, 1, "[trials]")
    _check_leading(source, key, a, (n,))
    _check_finite(source, key, a)
    _check_integer_valued(source, key, a)


def _check_spikes(source: str, spikes: np.ndarray) -> None:
    _check_layout(source, "spikes", spikes, 3, "[trials, time, neurons]")
    if min(spikes.shape) == 0:
        raise _fail(source, "spikes", f"must be non-empty, got shape {spikes.shape}")
    _check_finite(source, "spikes", spikes)
    _check_non_negative(source, "spikes", spikes)
    _check_integer_valued(source, "spikes", spikes)


def _check_lengths(source: str, lengths: np.ndarray, spikes: np.ndarray) -> None:
    n, t = spikes.shape[:2]
    _check_per_trial(source, "lengths", lengths, n)
    outside = (lengths < 1) | (lengths > t)
    if outside.any():
        trial = int(outside.argmax())
        raise _fail(source, "lengths", f"must lie in [1, {t}], got {lengths[trial]} at trial {trial}")
    padding = np.arange(t)[None, :] >= lengths[:, None]
    trial = _first_trial((spikes != 0).any(axis=2) & padding)
    if trial is not None:
        raise _fail(source, "spikes", f"has non-zero counts past 'lengths' (padding) at trial {trial}")


def as_counts(spikes: np.ndarray, source: str) -> np.ndarray:
    """Non-negative integer counts as :data:`COUNT_DTYPE`, refusing (never wrapping) counts beyond its range.

    Raises:
        DataFormatError: a count above ``np.iinfo(COUNT_DTYPE).max``, naming the largest one.
    """
    spikes = np.asarray(spikes)
    largest = spikes.max(initial=0)
    if largest > np.iinfo(COUNT_DTYPE).max:
        raise _fail(source, "spikes", f"holds a count of {largest:.0f}, above {np.iinfo(COUNT_DTYPE).max}, the "
                    f"largest {np.dtype(COUNT_DTYPE).name} count (implausible rates?)")
    return spikes.astype(COUNT_DTYPE, copy=False)


def _check_split(source: str, split: np.ndarray, n: int) -> None:
    _check_per_trial(source, "split", split, n)
    bad = ~np.isin(split, list(SPLIT_CODES.values()))
    if bad.any():
        trial = int(bad.argmax())
        raise _fail(source, "split", f"codes must be 0, 1 or 2, got {split[trial]} at trial {trial}")


def _check_bin_width(source: str, bin_width: object) -> float:
    try:
        return check_bin_width(bin_width, f"{source}: 'bin_width'")
    except ValueError as err:
        raise DataFormatError(str(err)) from None


def validate_arrays(arrays: dict[str, np.ndarray], bin_width: object, source: str) -> float:
    """Check arrays keyed as in the file against the format; returns ``bin_width`` as float.

    Raises:
        DataFormatError: naming ``source`` and the offending key.
    """
    if "spikes" not in arrays:
        raise _fail(source, "spikes", "is missing")
    spikes = arrays["spikes"]
    _check_spikes(source, spikes)
    n, t = spikes.shape[:2]
    if "lengths" in arrays:
        _check_lengths(source, arrays["lengths"], spikes)
    for key, (ndim, layout) in _OPTIONAL_FLOAT_LAYOUTS.items():
        if key in arrays:
            _check_layout(source, key, arrays[key], ndim, layout)
            _check_leading(source, key, arrays[key], spikes.shape if key == "rates" else (n, t)[: ndim - 1])
            _check_finite(source, key, arrays[key])
    if "rates" in arrays:
        _check_non_negative(source, "rates", arrays["rates"])
    if "split" in arrays:
        _check_split(source, arrays["split"], n)
    return _check_bin_width(source, bin_width)


# ------------------------------------------------------------------------------------ writer, reader


def _write_contents(f: h5py.File, arrays: dict[str, np.ndarray], bin_width: float, description: str) -> None:
    """Fill an open file: sparse counts gzip-compressed (auto-chunked), the rest stored plainly."""
    for key, a in arrays.items():
        compression = {"compression": "gzip", "compression_opts": 1} if key == "spikes" else {}
        f.create_dataset(key, data=a, **compression)
    f.attrs["bin_width"] = bin_width
    f.attrs["description"] = description


def write_dataset(
    path: str | os.PathLike,
    spikes: np.ndarray,
    *,
    bin_width: float,
    lengths: np.ndarray | None = None,
    behavior: np.ndarray | None = None,
    conditions: np.ndarray | None = None,
    split: np.ndarray | None = None,
    rates: np.ndarray | None = None,
    latents: np.ndarray | None = None,
    description: str = "",
) -> Path:
    """Validate, then write a dataset file atomically; returns the path.

    Arrays use the file layout (``spikes`` ``[n, T, N]``, see module docstring) and keep their dtypes.
    The file is written through :func:`ldns_fast.atomic.atomic_write`, so ``path`` is either untouched
    or complete; the temporary file is removed on any failure.

    Raises:
        DataFormatError: invalid arrays (nothing is written).
    """
    target = Path(path)
    given = dict(spikes=spikes, lengths=lengths, behavior=behavior, conditions=conditions, rates=rates,
                 latents=latents, split=split)
    arrays = {key: np.asarray(a) for key, a in given.items() if a is not None}
    bin_width = validate_arrays(arrays, bin_width, str(target))

    def write(temporary: str) -> None:
        with h5py.File(temporary, "w") as f:
            _write_contents(f, arrays, bin_width, str(description))

    return atomic_write(target, write)


class DatasetWriter:
    """Write generated trials batch by batch into a dataset file, atomically (bounded memory).

    ``spikes`` and ``rates`` ``[n, T, N]`` and ``latents`` ``[n, T, C]`` are created zero-filled and
    chunked per trial; :meth:`write` validates each batch like :func:`write_dataset` and stores it.
    Use as a context manager: on a clean exit with every trial written the file appears at ``path``;
    on any error (or missing trials) nothing is left behind.
    """

    def __init__(
        self, path: str | os.PathLike, n_trials: int, n_bins: int, n_neurons: int, latent_channels: int,
        bin_width: float, description: str = "",
    ) -> None:
        for name, value in (("n_trials", n_trials), ("n_bins", n_bins), ("n_neurons", n_neurons),
                            ("latent_channels", latent_channels)):
            if not is_integer(value, numpy=True) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.path = Path(path)
        self.bin_width = _check_bin_width(str(self.path), bin_width)
        self.shape = (int(n_trials), int(n_bins), int(n_neurons), int(latent_channels))
        self.description = str(description)
        self._written = np.zeros(n_trials, dtype=bool)

    def __enter__(self) -> DatasetWriter:
        self._atomic = atomic_path(self.path)
        self._file = h5py.File(self._atomic.__enter__(), "w")
        n, T, N, C = self.shape
        gzip = {"compression": "gzip", "compression_opts": 1}
        self._file.create_dataset("spikes", (n, T, N), dtype=COUNT_DTYPE, chunks=(1, min(T, 4096), N), **gzip)
        self._file.create_dataset("rates", (n, T, N), dtype=np.float32, chunks=(1, min(T, 4096), N))
        self._file.create_dataset("latents", (n, T, C), dtype=np.float32, chunks=(1, min(T, 4096), C))
        self._file.create_dataset("lengths", (n,), dtype=np.int64)
        self._file.attrs["bin_width"] = self.bin_width
        self._file.attrs["description"] = self.description
        return self

    def write(self, index: np.ndarray, spikes: np.ndarray, rates: np.ndarray, latents: np.ndarray,
              lengths: np.ndarray) -> None:
        """Store trials ``index [k]``: ``spikes``/``rates`` ``[k, t, N]``, ``latents [k, t, C]``, ``lengths [k]``."""
        index = np.asarray(index)
        n, T, N, C = self.shape
        source = f"{self.path} (trials {index[:5].tolist()}...)"
        arrays = {"spikes": np.asarray(spikes), "rates": np.asarray(rates), "latents": np.asarray(latents),
                  "lengths": np.asarray(lengths)}
        validate_arrays(arrays, self.bin_width, source)
        k, t = arrays["spikes"].shape[:2]
        if index.shape != (k,) or not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= n:
            raise ValueError(f"index must hold {k} trial numbers in [0, {n}), got {index.tolist()[:10]}")
        if t > T or arrays["spikes"].shape[2] != N or arrays["latents"].shape[2] != C:
            raise ValueError(f"batch shapes {arrays['spikes'].shape} / {arrays['latents'].shape} do not fit "
                             f"[trials, <= {T}, {N}] / [trials, <= {T}, {C}]")
        arrays["spikes"] = as_counts(arrays["spikes"], source)
        for row, trial in enumerate(index.tolist()):
            length = int(arrays["lengths"][row])
            self._file["spikes"][trial, :length] = arrays["spikes"][row, :length]
            self._file["rates"][trial, :length] = arrays["rates"][row, :length]
            self._file["latents"][trial, :length] = arrays["latents"][row, :length]
            self._file["lengths"][trial] = length
        self._written[index] = True

    def __exit__(self, kind, error, traceback) -> None:
        self._file.close()
        if error is None and not self._written.all():
            missing = np.flatnonzero(~self._written)
            error = DataFormatError(f"{self.path}: {missing.size} of {self.shape[0]} trials were never written "
                                    f"(first: {missing[:5].tolist()}); the file was not kept")
            self._atomic.__exit__(type(error), error, None)
            raise error
        self._atomic.__exit__(kind, error, traceback)


def _read_array(f: h5py.File, key: str, source: str) -> np.ndarray:
    try:
        node = f[key]
        if isinstance(node, h5py.Dataset):
            return np.asarray(node[()])
    except Exception as err:  # h5py raises OSError, RuntimeError, KeyError, ValueError, TypeError on corrupt files
        raise _fail(source, key, f"cannot be read: {err}") from err
    raise _fail(source, key, "must be a dataset, not a group")


def _read_description(f: h5py.File) -> str:
    value = f.attrs.get("description", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def read_dataset(path: str | os.PathLike) -> SpikeData:
    """Read and validate a dataset file (format in the module docstring).

    Missing ``lengths`` means every trial spans all ``T`` bins; a missing ``split`` is replaced by
    :func:`random_split` with the default fractions and seed.

    Raises:
        DataFormatError: missing file, not HDF5, or any format violation; the message names the path
            and the key (and the first offending trial where cheap).
    """
    source = str(path)
    if not os.path.isfile(source):
        raise DataFormatError(f"{source}: no such file")
    if not h5py.is_hdf5(source):
        raise DataFormatError(f"{source}: not an HDF5 file")
    try:
        with h5py.File(source, "r") as f:
            if "spikes" not in f:
                raise _fail(source, "spikes", "is missing (required dataset [trials, time, neurons])")
            if "bin_width" not in f.attrs:
                raise _fail(source, "bin_width", "is missing (required root attribute, seconds)")
            arrays = {key: _read_array(f, key, source) for key in ARRAY_KEYS if key in f}
            raw_bin_width = f.attrs["bin_width"]
            description = _read_description(f)
    except DataFormatError:
        raise
    except Exception as err:  # any h5py failure on a corrupt file (OSError, RuntimeError, KeyError, ...)
        raise DataFormatError(f"{source}: cannot be read as HDF5 (corrupt file?): {err}") from err
    bin_width = validate_arrays(arrays, raw_bin_width, source)
    spikes = arrays.pop("spikes")
    n, t = spikes.shape[:2]
    lengths = arrays.pop("lengths", np.full(n, t)).astype(np.int64)
    split_codes = arrays.pop("split", None)
    split_codes = random_split(n) if split_codes is None else split_codes.astype(np.uint8)
    return SpikeData(spikes=spikes, bin_width=bin_width, lengths=lengths, split_codes=split_codes,
                     description=description, path=source, **arrays)
