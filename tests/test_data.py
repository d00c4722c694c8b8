"""Tests for :mod:`ldns_fast.data`: the Lorenz generator, its cache, the HDF5 format and training tensors.

Oracles are independent computations: Poisson probabilities from the closed-form pmf, rates recomputed
in float64 from the returned latents and projection, and files written with plain h5py.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

import ldns_fast.data.lorenz as lorenz_module
from ldns_fast.data import (
    DataFormatError,
    DatasetWriter,
    LorenzConfig,
    load_lorenz,
    pad_trials,
    random_split,
    read_dataset,
    simulate_lorenz,
    to_tensors,
    write_dataset,
)
from ldns_fast.data.lorenz import poisson_counts

SMALL = LorenzConfig(n_trials=200, n_bins=128, n_neurons=32, seed=3)
TINY = LorenzConfig(n_trials=20, n_bins=32, n_neurons=8, seed=1)


@pytest.fixture(scope="module")
def sample() -> lorenz_module.LorenzSample:
    return simulate_lorenz(SMALL)


def make_arrays(n: int = 6, t: int = 10, neurons: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid arrays for every key; trials have lengths in [1, t] with zero padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=n)
    lengths[0] = t
    valid = np.arange(t)[None, :] < lengths[:, None]
    spikes = rng.poisson(1.0, size=(n, t, neurons)).astype(np.int16) * valid[:, :, None]
    return {
        "spikes": spikes.astype(np.int16),
        "lengths": lengths.astype(np.int32),
        "behavior": rng.standard_normal((n, t, 2)),
        "conditions": rng.standard_normal((n, 3)).astype(np.float32),
        "rates": rng.random((n, t, neurons)).astype(np.float32),
        "latents": rng.standard_normal((n, t, 3)),
        "split": np.arange(n).astype(np.uint8) % 3,
    }


def write_raw(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, object]) -> Path:
    """Write a file with plain h5py, bypassing the validating writer."""
    with h5py.File(path, "w") as f:
        for key, a in arrays.items():
            f.create_dataset(key, data=a)
        f.attrs.update(attrs)
    return path


# ------------------------------------------------------------------------------------------- Lorenz


def test_lorenz_shapes_and_dtypes(sample: lorenz_module.LorenzSample) -> None:
    n, t, neurons = SMALL.n_trials, SMALL.n_bins, SMALL.n_neurons
    assert sample.spikes.shape == sample.rates.shape == (n, t, neurons)
    assert sample.latents.shape == (n, t, 3)
    assert sample.projection.shape == (3, neurons)
    assert sample.split_codes.shape == (n,)
    assert np.issubdtype(sample.spikes.dtype, np.integer) and sample.spikes.min() >= 0


def test_lorenz_latents_are_zscored(sample: lorenz_module.LorenzSample) -> None:
    flat = sample.latents.reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, rtol=1e-9)


def test_lorenz_latents_are_smooth_butterflies(sample: lorenz_module.LorenzSample) -> None:
    x, z = sample.latents[..., 0], sample.latents[..., 2]
    steps = np.abs(np.diff(sample.latents, axis=1))
    assert steps.max() < 0.5  # z-scored units per bin: smooth at the bin scale
    # a loop around a wing has one z maximum; a 128-bin trial spans 1.28 time units (~1.75 loops)
    peaks = ((z[:, 1:-1] > z[:, :-2]) & (z[:, 1:-1] > z[:, 2:])).sum(axis=1)
    assert 1.0 < peaks.mean() < 3.0
    visits_both_wings = (x.max(axis=1) > 0.5) & (x.min(axis=1) < -0.5)
    assert visits_both_wings.mean() > 0.3


def test_lorenz_projection_columns_have_unit_norm(sample: lorenz_module.LorenzSample) -> None:
    np.testing.assert_allclose(np.linalg.norm(sample.projection, axis=0), 1.0, rtol=1e-12)


def test_lorenz_rates_follow_softplus_of_projection(sample: lorenz_module.LorenzSample) -> None:
    drive = sample.latents @ sample.projection + math.log(0.3)
    expected = 0.5 * np.logaddexp(0.0, 2.0 * drive)
    np.testing.assert_allclose(sample.rates, expected, rtol=1e-5, atol=1e-6)


def test_lorenz_counts_are_poisson_in_the_rates(sample: lorenz_module.LorenzSample) -> None:
    counts = sample.spikes.astype(np.float64)
    rates = sample.rates.astype(np.float64)
    assert counts.mean() == pytest.approx(rates.mean(), rel=0.03)
    # Poisson: E[(s - r)^2] = E[r]
    assert ((counts - rates) ** 2).mean() == pytest.approx(rates.mean(), rel=0.05)


def test_poisson_counts_are_uint8_and_refuse_overflow() -> None:
    rates = np.full((50, 4), 3.0, dtype=np.float32)
    counts = poisson_counts(rates, torch.Generator().manual_seed(7))
    assert counts.dtype == np.uint8 and counts.shape == rates.shape
    assert counts.mean() == pytest.approx(3.0, rel=0.2)
    with pytest.raises(ValueError, match="exceeds 255"):
        poisson_counts(np.full(10, 1000.0, dtype=np.float32), torch.Generator().manual_seed(0))


def test_lorenz_is_deterministic_in_the_seed() -> None:
    first, again = simulate_lorenz(TINY), simulate_lorenz(TINY)
    other = simulate_lorenz(replace(TINY, seed=TINY.seed + 1))
    for name in ("spikes", "rates", "latents", "projection", "split_codes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    for name in ("spikes", "latents", "projection"):
        assert not np.array_equal(getattr(first, name), getattr(other, name))


def test_lorenz_split_fractions(sample: lorenz_module.LorenzSample) -> None:
    assert np.bincount(sample.split_codes, minlength=3).tolist() == [140, 20, 40]


def test_lorenz_config_presets_and_validation() -> None:
    paper, small = LorenzConfig.paper(), LorenzConfig.small()
    assert (paper.n_trials, paper.n_bins, paper.n_neurons) == (5000, 256, 128)
    assert (small.n_trials, small.n_bins, small.n_neurons) == (1000, 128, 64)
    assert LorenzConfig.preset("small", seed=4) == LorenzConfig.small(seed=4)
    with pytest.raises(ValueError, match="preset"):
        LorenzConfig.preset("huge")
    with pytest.raises(ValueError, match="n_trials"):
        LorenzConfig(n_trials=0)
    with pytest.raises(ValueError, match="fractions"):
        LorenzConfig(splits=(0.5, 0.5, 0.5))


# -------------------------------------------------------------------------------------------- cache


def test_load_lorenz_writes_a_valid_file_then_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = load_lorenz(TINY, cache_dir=tmp_path)
    assert path.parent == tmp_path and TINY.cache_key() in path.name
    data = read_dataset(path)
    expected = simulate_lorenz(TINY)
    np.testing.assert_array_equal(data.spikes, expected.spikes)
    np.testing.assert_array_equal(data.rates, expected.rates)
    np.testing.assert_array_equal(data.latents, expected.latents)
    np.testing.assert_array_equal(data.split_codes, expected.split_codes)
    assert data.bin_width == TINY.bin_width

    mtime = path.stat().st_mtime_ns

    def no_generation(config: LorenzConfig) -> None:
        raise AssertionError("regenerated although the cache was valid")

    monkeypatch.setattr(lorenz_module, "simulate_lorenz", no_generation)
    assert load_lorenz(TINY, cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime
    assert sorted(tmp_path.iterdir()) == [path]


def test_load_lorenz_regenerates_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / TINY.file_name()
    path.write_bytes(b"not an hdf5 file")
    assert load_lorenz(TINY, cache_dir=tmp_path) == path
    np.testing.assert_array_equal(read_dataset(path).spikes, simulate_lorenz(TINY).spikes)


def test_load_lorenz_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDNS_FAST_CACHE", str(tmp_path / "cache"))
    path = load_lorenz(TINY)
    assert path.parent == tmp_path / "cache" and path.is_file()
    other = load_lorenz(replace(TINY, n_neurons=9))
    assert other != path and other.is_file()


# ------------------------------------------------------------------------------------ format: writer


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    arrays = make_arrays()
    path = write_dataset(tmp_path / "all.h5", bin_width=0.02, description="round trip", **arrays)
    data = read_dataset(path)
    for key in ("spikes", "behavior", "conditions", "rates", "latents"):
        np.testing.assert_array_equal(getattr(data, key), arrays[key])
        assert getattr(data, key).dtype == arrays[key].dtype
    np.testing.assert_array_equal(data.lengths, arrays["lengths"])
    np.testing.assert_array_equal(data.split_codes, arrays["split"])
    assert data.bin_width == 0.02 and data.description == "round trip" and data.path == str(path)


def test_optional_fields_default(tmp_path: Path) -> None:
    spikes = np.ones((50, 7, 3), dtype=np.float32)  # float counts holding whole numbers are allowed
    path = write_dataset(tmp_path / "bare.h5", spikes, bin_width=0.005)
    data, again = read_dataset(path), read_dataset(path)
    assert data.lengths.tolist() == [7] * 50
    assert data.behavior is None and data.conditions is None and data.rates is None and data.latents is None
    assert np.bincount(data.split_codes, minlength=3).tolist() == [35, 5, 10]
    np.testing.assert_array_equal(data.split_codes, again.split_codes)
    np.testing.assert_array_equal(data.split_codes, random_split(50))


# ------------------------------------------------------------------------------ format: validation

Mutation = Callable[[dict[str, np.ndarray], dict[str, object]], None]


def _set(key: str, value: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Mutation:
    def mutate(arrays: dict[str, np.ndarray], attrs: dict[str, object]) -> None:
        arrays[key] = value(arrays)

    return mutate


def _poke(key: str, index: tuple[int, ...], value: float, dtype: type = np.float64) -> Mutation:
    def mutate(arrays: dict[str, np.ndarray], attrs: dict[str, object]) -> None:
        a = arrays[key].astype(dtype)
        a[index] = value
        arrays[key] = a

    return mutate


def _drop_array(key: str) -> Mutation:
    return lambda arrays, attrs: arrays.pop(key)


def _drop_attr(key: str) -> Mutation:
    return lambda arrays, attrs: attrs.pop(key)


# (case, mutation, key named in the message, first offending trial or None)
INVALID_CASES: list[tuple[str, Mutation, str, int | None]] = [
    ("missing spikes", _drop_array("spikes"), "spikes", None),
    ("missing bin_width", _drop_attr("bin_width"), "bin_width", None),
    ("bin_width zero", lambda arrays, attrs: attrs.update(bin_width=0.0), "bin_width", None),
    ("spikes 2-D", _set("spikes", lambda a: a["spikes"][:, :, 0]), "spikes", None),
    ("spikes not numbers", _set("spikes", lambda a: a["spikes"] > 0), "spikes", None),
    ("negative count", _poke("spikes", (3, 0, 1), -1, np.int16), "spikes", 3),
    ("fractional count", _poke("spikes", (2, 0, 0), 0.5), "spikes", 2),
    ("NaN count", _poke("spikes", (4, 0, 2), np.nan), "spikes", 4),
    ("inf behavior", _poke("behavior", (1, 2, 0), np.inf), "behavior", 1),
    ("NaN conditions", _poke("conditions", (5, 1), np.nan), "conditions", 5),
    ("NaN rates", _poke("rates", (2, 1, 1), np.nan), "rates", 2),
    ("negative rates", _poke("rates", (3, 1, 1), -0.1), "rates", 3),
    ("inf latents", _poke("latents", (4, 0, 0), -np.inf), "latents", 4),
    ("length zero", _poke("lengths", (2,), 0, np.int32), "lengths", 2),
    ("length above time", _poke("lengths", (1,), 11, np.int32), "lengths", 1),
    ("fractional length", _poke("lengths", (3,), 2.5), "lengths", 3),
    ("lengths wrong trial count", _set("lengths", lambda a: a["lengths"][:-1]), "lengths", None),
    ("counts in padding", _poke("lengths", (0,), 1, np.int32), "spikes", 0),
    ("behavior wrong trial count", _set("behavior", lambda a: a["behavior"][:-1]), "behavior", None),
    ("behavior wrong time length", _set("behavior", lambda a: a["behavior"][:, :-1]), "behavior", None),
    ("behavior 2-D", _set("behavior", lambda a: a["behavior"][:, :, 0]), "behavior", None),
    ("conditions wrong trial count", _set("conditions", lambda a: a["conditions"][1:]), "conditions", None),
    ("rates wrong neurons", _set("rates", lambda a: a["rates"][:, :, :-1]), "rates", None),
    ("latents wrong time length", _set("latents", lambda a: a["latents"][:, 1:]), "latents", None),
    ("split wrong trial count", _set("split", lambda a: a["split"][:-2]), "split", None),
    ("split code 3", _poke("split", (4,), 3, np.uint8), "split", 4),
]


WRITER_CASES = [case for case in INVALID_CASES if case[0] != "missing spikes"]  # spikes is positional


Parts = tuple[dict[str, np.ndarray], dict[str, object]]


@pytest.fixture
def parts() -> Parts:
    """Valid arrays and root attributes."""
    arrays = make_arrays()
    arrays["spikes"][0, -1, 0] = 1  # trial 0 spans all bins: setting its length to 1 exposes padding
    return arrays, {"bin_width": 0.01, "description": "x"}


@pytest.mark.parametrize("case, mutate, key, trial", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_reader_rejects_invalid_files(
    tmp_path: Path, parts: Parts, case: str, mutate: Mutation, key: str, trial: int | None
) -> None:
    arrays, attrs = parts
    read_dataset(write_raw(tmp_path / "ok.h5", arrays, attrs))  # the unmodified file is valid
    mutate(arrays, attrs)
    path = write_raw(tmp_path / "bad.h5", arrays, attrs)
    with pytest.raises(DataFormatError) as info:
        read_dataset(path)
    message = str(info.value)
    assert str(path) in message and repr(key) in message
    if trial is not None:
        assert f"trial {trial}" in message


@pytest.mark.parametrize("case, mutate, key, trial", WRITER_CASES, ids=[c[0] for c in WRITER_CASES])
def test_writer_rejects_invalid_arrays_and_writes_nothing(
    tmp_path: Path, parts: Parts, case: str, mutate: Mutation, key: str, trial: int | None
) -> None:
    arrays, attrs = parts
    mutate(arrays, attrs)
    with pytest.raises(DataFormatError, match=repr(key)):
        write_dataset(tmp_path / "bad.h5", bin_width=attrs.get("bin_width"), **arrays)
    assert list(tmp_path.iterdir()) == []


def test_reader_rejects_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    with pytest.raises(DataFormatError, match="no such file") as info:
        read_dataset(missing)
    assert str(missing) in str(info.value)
    text = tmp_path / "notes.h5"
    text.write_text("spikes,bin_width\n1,2\n")
    with pytest.raises(DataFormatError, match="not an HDF5 file") as info:
        read_dataset(text)
    assert str(text) in str(info.value)


def test_reader_rejects_a_group_named_spikes(tmp_path: Path) -> None:
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as f:
        f.create_group("spikes")
        f.attrs["bin_width"] = 0.01
    with pytest.raises(DataFormatError, match="'spikes' must be a dataset"):
        read_dataset(path)


def test_reader_turns_every_failure_on_corrupt_metadata_into_a_data_format_error(tmp_path: Path) -> None:
    """Single flipped bytes in the group B-tree, heap and symbol table signatures and in the ``bin_width``
    attribute's header: h5py raised RuntimeError, KeyError or ValueError for some of them."""
    path = write_dataset(tmp_path / "d.h5", np.ones((3, 4, 2), np.uint8), bin_width=0.01)
    original = path.read_bytes()
    attribute = original.index(b"bin_width")
    positions = [original.index(signature) for signature in (b"TREE", b"HEAP", b"SNOD")]
    refused = []
    for position in positions + list(range(attribute, attribute + 64)):
        corrupt = bytearray(original)
        corrupt[position] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            read_dataset(path)
        except DataFormatError as err:
            assert str(path) in str(err)
            refused.append(position)
    assert positions[0] in refused and len(refused) > 10  # the root B-tree signature made h5py raise RuntimeError


# ---------------------------------------------------------------------------------- atomic writing


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_invalid_write_keeps_the_existing_file(tmp_path: Path) -> None:
    arrays = make_arrays()
    target = write_dataset(tmp_path / "data.h5", bin_width=0.01, **arrays)
    before = _folder_state(tmp_path)
    arrays["spikes"] = -arrays["spikes"] - 1
    with pytest.raises(DataFormatError):
        write_dataset(target, bin_width=0.01, **arrays)
    assert _folder_state(tmp_path) == before


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_no_partial_or_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    arrays = make_arrays()
    target = tmp_path / "data.h5"
    if existing:
        write_dataset(target, bin_width=0.01, **arrays)
    before = _folder_state(tmp_path)
    original = h5py.Group.create_dataset
    written: list[str] = []

    def fail_on_third(self: h5py.Group, name: str, *args: object, **kwargs: object) -> h5py.Dataset:
        if len(written) == 2:
            raise RuntimeError("disk full")
        written.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset(target, bin_width=0.01, **{**arrays, "spikes": arrays["spikes"] * 2})
    assert len(written) == 2  # the failure came after part of the file was written
    assert _folder_state(tmp_path) == before


# ------------------------------------------------------------------------------ tensors and dataset


def test_pad_trials_keeps_every_trial() -> None:
    rng = np.random.default_rng(0)
    trials = [rng.poisson(1.0, size=(t, 5)) for t in (4, 9, 1, 7)]
    padded, lengths = pad_trials(trials)
    assert padded.shape == (4, 9, 5) and lengths.tolist() == [4, 9, 1, 7]
    for i, trial in enumerate(trials):
        np.testing.assert_array_equal(padded[i, : len(trial)], trial)
        assert not padded[i, len(trial) :].any()
    with pytest.raises(ValueError, match="trailing shape"):
        pad_trials([np.zeros((3, 5)), np.zeros((3, 4))])


def test_variable_length_trials_become_masked_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lengths_in = [12, 5, 1, 9, 12, 3]
    spikes, lengths = pad_trials([rng.poisson(2.0, size=(t, 4)) + 1 for t in lengths_in])
    behavior, _ = pad_trials([rng.standard_normal((t, 2)) + 5 for t in lengths_in])
    behavior[1, 7] = 3.0  # junk past the length of trial 1: allowed in the file, zeroed in tensors
    path = write_dataset(tmp_path / "var.h5", spikes, bin_width=0.02, lengths=lengths, behavior=behavior)
    tensors = to_tensors(read_dataset(path))

    assert tensors.spikes.shape == (6, 4, 12) and tensors.spikes.dtype == torch.float32
    assert tensors.behavior.shape == (6, 2, 12)
    assert tensors.lengths.tolist() == lengths_in
    assert tensors.mask.sum(dim=1).tolist() == lengths_in
    for i, n_valid in enumerate(lengths_in):
        assert tensors.mask[i, :n_valid].eq(1).all() and tensors.mask[i, n_valid:].eq(0).all()
        assert tensors.spikes[i, :, :n_valid].ge(1).all() and tensors.spikes[i, :, n_valid:].eq(0).all()
        assert tensors.behavior[i, :, n_valid:].eq(0).all()
    np.testing.assert_array_equal(tensors.spikes.numpy(), spikes.transpose(0, 2, 1))
    np.testing.assert_allclose(tensors.behavior[0].numpy(), behavior[0].T, rtol=1e-6)


def test_split_subsets_partition_the_trials(tmp_path: Path) -> None:
    arrays = make_arrays(n=30)
    data = read_dataset(write_dataset(tmp_path / "s.h5", bin_width=0.01, **arrays))
    parts = {name: data.split(name) for name in ("train", "val", "test")}
    assert sum(p.n_trials for p in parts.values()) == 30
    for code, part in enumerate(parts.values()):
        chosen = arrays["split"] == code
        np.testing.assert_array_equal(part.spikes, arrays["spikes"][chosen])
        np.testing.assert_array_equal(part.conditions, arrays["conditions"][chosen])
        np.testing.assert_array_equal(part.lengths, arrays["lengths"][chosen])
        assert (part.split_codes == code).all() and part.bin_width == data.bin_width
    with pytest.raises(ValueError, match="split name"):
        data.split("training")


def test_variable_length_lorenz_keeps_every_trial_with_zero_padding(tmp_path: Path) -> None:
    config = LorenzConfig(n_trials=40, n_bins=32, n_neurons=6, min_bins=8)
    sample = simulate_lorenz(config)
    assert sample.lengths.min() >= 8 and sample.lengths.max() <= 32 and len(set(sample.lengths.tolist())) > 5
    for i, length in enumerate(sample.lengths):
        assert not sample.spikes[i, length:].any() and not sample.rates[i, length:].any()
        assert sample.rates[i, :length].min() > 0
    data = read_dataset(load_lorenz(config, cache_dir=tmp_path))
    assert data.n_trials == 40 and data.lengths.tolist() == sample.lengths.tolist()
    assert np.array_equal(simulate_lorenz(replace(config, min_bins=None)).spikes[:, :8], sample.spikes[:, :8])
    with pytest.raises(ValueError, match="min_bins"):
        LorenzConfig(n_bins=10, min_bins=11)


# ---------------------------------------------------------------- streaming writer


def _batch(rng: np.random.Generator, lengths: list[int], T: int, N: int = 3, C: int = 2) -> dict[str, np.ndarray]:
    spikes = rng.poisson(1.0, (len(lengths), T, N))
    rates, latents = rng.random((len(lengths), T, N)), rng.normal(size=(len(lengths), T, C))
    for i, t in enumerate(lengths):
        spikes[i, t:], rates[i, t:], latents[i, t:] = 0, 0, 0
    return dict(spikes=spikes, rates=rates, latents=latents, lengths=np.array(lengths))


def test_dataset_writer_stores_batches_in_any_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first, second = _batch(rng, [6, 2], 6), _batch(rng, [4], 4)
    with DatasetWriter(tmp_path / "s.h5", 3, 6, 3, 2, bin_width=0.02, description="stream") as writer:
        writer.write(np.array([2, 0]), **first)
        writer.write(np.array([1]), **second)
    data = read_dataset(tmp_path / "s.h5")
    assert data.lengths.tolist() == [2, 4, 6] and data.bin_width == 0.02 and data.description == "stream"
    assert np.array_equal(data.spikes[2], first["spikes"][0]) and np.array_equal(data.spikes[0], first["spikes"][1])
    assert np.array_equal(data.spikes[1, :4], second["spikes"][0]) and not data.spikes[1, 4:].any()
    assert np.allclose(data.latents[1, :4], second["latents"][0])


def test_dataset_writer_leaves_no_file_when_trials_are_missing_or_invalid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(DataFormatError, match="1 of 2 trials were never written"):
        with DatasetWriter(tmp_path / "a.h5", 2, 5, 3, 2, bin_width=0.01) as writer:
            writer.write(np.array([0]), **_batch(rng, [5], 5))
    bad = _batch(rng, [5], 5)
    bad["spikes"][0, 0, 0] = -1
    with pytest.raises(DataFormatError, match="spikes"):
        with DatasetWriter(tmp_path / "b.h5", 1, 5, 3, 2, bin_width=0.01) as writer:
            writer.write(np.array([0]), **bad)
    with pytest.raises(ValueError, match="index must hold 1 trial numbers"):
        with DatasetWriter(tmp_path / "c.h5", 1, 5, 3, 2, bin_width=0.01) as writer:
            writer.write(np.array([3]), **_batch(rng, [5], 5))
    assert list(tmp_path.iterdir()) == []
