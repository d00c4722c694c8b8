"""Tests for :mod:`ldns_fast.data.nwb` and ``python -m ldns_fast.convert nwb``.

Small NWB files are written with pynwb; the oracle bins their few dozen spikes one at a time with a plain
loop, and behaviour is checked against the analytic signal the file was sampled from.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from ldns_fast.convert import main  # noqa: E402
from ldns_fast.data import DataFormatError, read_dataset, read_nwb, write_dataset  # noqa: E402

BIN = 0.1
RNG = np.random.default_rng(0)
# unit id -> spike times; unit 11 is stored unsorted, the last spike (2.87 s) ends the recording
UNITS = {
    10: np.sort(RNG.uniform(0.0, 2.8, 15)),
    11: RNG.uniform(0.0, 2.8, 20),
    12: np.append(np.sort(RNG.uniform(0.0, 2.8, 12)), 2.87),
}
STARTS = np.array([0.0, 0.6, 1.5])
STOPS = np.array([0.5, 1.33, 2.4])  # 5, 8 (last bin 0.03 s) and 9 bins
GO_CUE = np.array([0.25, 0.9, 1.8])
DIRECTION = np.array([0.5, 1.5, 2.5])
TARGET = np.array([3, 1, 2])


def velocity(t: np.ndarray) -> np.ndarray:
    """The analytic behaviour ``[len(t), 2]`` sampled into the files."""
    return np.stack([np.sin(2 * np.pi * t), 3 * t + 1], axis=-1)


def write_nwb(path: Path, *, units: bool = True, trials: bool = True, stops: np.ndarray = STOPS,
              behavior_span: tuple[float, float] = (0.0, 3.0), acquired_velocity: bool = False) -> Path:
    """An NWB file with the units above, a trials table, 1 kHz hand velocity in processing/behavior and
    hand position ``[t, -t]`` at 100 Hz in processing/behavior/Position (``acquired_velocity``: a second
    series called hand_velocity in acquisition)."""
    nwbfile = pynwb.NWBFile(session_description="test", identifier=path.stem,
                            session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    if units:
        for unit_id, times in UNITS.items():
            nwbfile.add_unit(spike_times=times, id=unit_id)
    if trials:
        nwbfile.add_trial_column("go_cue_time", "go cue")
        nwbfile.add_trial_column("direction", "reach direction (rad)")
        nwbfile.add_trial_column("target", "target index")
        for row in zip(STARTS, stops, GO_CUE, DIRECTION, TARGET):
            nwbfile.add_trial(**dict(zip(["start_time", "stop_time", "go_cue_time", "direction", "target"], row)))
    t = np.arange(behavior_span[0], behavior_span[1] + 5e-4, 1e-3)
    behavior = nwbfile.create_processing_module("behavior", "hand kinematics")
    behavior.add(pynwb.TimeSeries(name="hand_velocity", data=velocity(t), timestamps=t, unit="m/s"))
    position = pynwb.behavior.Position(name="Position")
    position.add_spatial_series(pynwb.behavior.SpatialSeries(
        name="hand_position", data=np.stack([t, -t], axis=-1)[::10], rate=100.0, reference_frame="start"))
    behavior.add(position)
    if acquired_velocity:
        nwbfile.add_acquisition(pynwb.TimeSeries(name="hand_velocity", data=t, timestamps=t, unit="m/s"))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


@pytest.fixture(scope="module")
def nwb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nwb(tmp_path_factory.mktemp("nwb") / "session.nwb")


def oracle_counts(starts: np.ndarray, stops: np.ndarray, unit_ids: list[int]) -> np.ndarray:
    """Counts ``[n, T, N]`` by looking at every spike: bin ``floor((t - start) / BIN)`` of each trial holding it."""
    n_bins = [int(np.ceil((b - a) / BIN - 1e-6)) for a, b in zip(starts, stops)]
    counts = np.zeros((len(starts), max(n_bins), len(unit_ids)), dtype=np.int64)
    for u, unit_id in enumerate(unit_ids):
        for t in UNITS[unit_id]:
            for i, (a, b) in enumerate(zip(starts, stops)):
                if a <= t < b:
                    counts[i, int((t - a) // BIN), u] += 1
    return counts


def oracle_centres(a: float, b: float) -> np.ndarray:
    """Bin centres of one trial: full bins from ``a``, the last one ending at ``b``."""
    lefts = np.arange(a, b - 1e-9, BIN)
    return (lefts + np.minimum(lefts + BIN, b)) / 2


def test_start_stop_trials_counts_lengths_behavior_conditions(nwb_path: Path, tmp_path: Path) -> None:
    data = read_nwb(nwb_path, bin_width=BIN, behavior=["hand_velocity"], conditions=["direction", "target"])
    np.testing.assert_array_equal(data.lengths, [5, 8, 9])
    np.testing.assert_array_equal(data.spikes, oracle_counts(STARTS, STOPS, [10, 11, 12]))
    assert data.spikes.sum() > 10  # the spikes fall into the trials, not only into gaps
    assert not data.spikes[0, 5:].any() and not data.spikes[1, 8:].any()  # zero padding
    for i, (a, b) in enumerate(zip(STARTS, STOPS)):
        np.testing.assert_allclose(data.behavior[i, : data.lengths[i]], velocity(oracle_centres(a, b)), atol=1e-5)
        assert not data.behavior[i, data.lengths[i]:].any()
    np.testing.assert_array_equal(data.conditions, np.stack([DIRECTION, TARGET], axis=1))
    assert "session.nwb" in data.description and "hand_velocity" in data.description
    write_dataset(tmp_path / "out.h5", data.spikes, bin_width=data.bin_width, lengths=data.lengths,
                  behavior=data.behavior, conditions=data.conditions, description=data.description)
    back = read_dataset(tmp_path / "out.h5")
    np.testing.assert_array_equal(back.spikes, data.spikes)
    np.testing.assert_array_equal(back.lengths, [5, 8, 9])
    assert back.bin_width == BIN


def test_aligned_windows_and_unit_selection(nwb_path: Path) -> None:
    data = read_nwb(nwb_path, bin_width=BIN, align="go_cue_time", window=(-0.2, 0.3), units=[12, 10],
                    behavior=["processing/behavior/hand_velocity", "hand_position"])
    starts, stops = GO_CUE - 0.2, GO_CUE + 0.3
    np.testing.assert_array_equal(data.lengths, [5, 5, 5])
    np.testing.assert_array_equal(data.spikes, oracle_counts(starts, stops, [12, 10]))
    full = read_nwb(nwb_path, bin_width=BIN, align="go_cue_time", window=(-0.2, 0.3))
    np.testing.assert_array_equal(data.spikes, full.spikes[:, :, [2, 0]])
    centres = np.stack([oracle_centres(a, b) for a, b in zip(starts, stops)])
    np.testing.assert_allclose(data.behavior[..., :2], velocity(centres.ravel()).reshape(3, 5, 2), atol=1e-5)
    np.testing.assert_allclose(data.behavior[..., 2:], np.stack([centres, -centres], axis=-1), atol=1e-9)


def test_consecutive_windows_keep_every_spike(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "no_trials.nwb", trials=False)
    data = read_nwb(path, bin_width=BIN, window_length=0.5)
    np.testing.assert_array_equal(data.lengths, [5, 5, 5, 5, 5, 4])  # 0..2.9 s, the last spike at 2.87 s
    starts = np.arange(6) * 0.5
    np.testing.assert_array_equal(data.spikes, oracle_counts(starts, np.minimum(starts + 0.5, 2.9), [10, 11, 12]))
    assert data.spikes.sum() == sum(len(t) for t in UNITS.values())


def test_cli_writes_dataset_and_refuses_to_overwrite(nwb_path: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "converted.h5"
    args = ["nwb", str(nwb_path), str(out), "--bin-width", "0.1", "--align", "go_cue_time", "--window", "-0.2",
            "0.3", "--behavior", "hand_velocity", "--conditions", "direction", "--units", "11", "12"]
    assert main(args) == 0
    assert "3 trials, 5 bins, 2 neurons, bin width 0.1 s" in capsys.readouterr().out
    data = read_dataset(out)
    np.testing.assert_array_equal(data.spikes, oracle_counts(GO_CUE - 0.2, GO_CUE + 0.3, [11, 12]))
    np.testing.assert_array_equal(data.conditions[:, 0], DIRECTION)
    assert data.behavior.shape == (3, 5, 2)
    with h5py.File(out, "r") as f:
        assert f.attrs["bin_width"] == 0.1 and "split" not in f

    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main([*args, "--overwrite"]) == 0
    assert read_dataset(out).n_neurons == 2


def test_cli_reports_data_errors_with_status_2(nwb_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["nwb", str(nwb_path), str(tmp_path / "x.h5"), "--bin-width", "0.1", "--units", "99"])
    assert exit_info.value.code == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bin_width": 0.0}, "bin_width must be a positive"),
        ({"bin_width": -0.1}, "bin_width must be a positive"),
        ({"bin_width": BIN, "align": "go_cue_time", "window": (0.3, -0.2)}, "before < after"),
        ({"bin_width": BIN, "align": "go_cue_time", "window": (0.2, 0.2)}, "before < after"),
        ({"bin_width": BIN, "align": "go_cue_time"}, "align and window go together"),
        ({"bin_width": BIN, "window_length": 0.0}, "window_length must be a positive"),
        ({"bin_width": BIN, "window_length": -1.0}, "window_length must be a positive"),
        ({"bin_width": BIN, "window_length": 0.25}, "whole number of bins"),
        ({"bin_width": BIN, "units": [10, 10]}, "must not repeat"),
    ],
)
def test_argument_errors(nwb_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_nwb(nwb_path, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"units": [10, 99]}, r"unknown unit ids \[99\]"),
        ({"align": "reward_time", "window": (-0.1, 0.1)}, "no column 'reward_time'; columns: start_time"),
        ({"conditions": ["speed"]}, "no column 'speed'"),
        ({"behavior": ["eye_position"]}, "no behaviour time series 'eye_position'; available: "
                                         "processing/behavior/Position/hand_position, "
                                         "processing/behavior/hand_velocity"),
    ],
)
def test_file_content_errors(nwb_path: Path, options: dict, message: str) -> None:
    with pytest.raises(DataFormatError, match=message):
        read_nwb(nwb_path, bin_width=BIN, **options)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        read_nwb(tmp_path / "missing.nwb", bin_width=BIN)
    (tmp_path / "text.nwb").write_text("not hdf5")
    with pytest.raises(DataFormatError, match=r"not an NWB file \(not HDF5\)"):
        read_nwb(tmp_path / "text.nwb", bin_width=BIN)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["spikes"] = np.zeros((1, 1, 1))
    with pytest.raises(DataFormatError, match="not an NWB file"):
        read_nwb(tmp_path / "plain.h5", bin_width=BIN)
    with pytest.raises(DataFormatError, match="no units table"):
        read_nwb(write_nwb(tmp_path / "no_units.nwb", units=False), bin_width=BIN)
    no_trials = write_nwb(tmp_path / "no_trials.nwb", trials=False)
    with pytest.raises(DataFormatError, match="no trials table; pass window_length"):
        read_nwb(no_trials, bin_width=BIN)
    with pytest.raises(DataFormatError, match=r"trial 2 has stop_time 1\.5 <= start_time 1\.5"):
        read_nwb(write_nwb(tmp_path / "bad_trial.nwb", stops=np.array([0.5, 1.33, 1.5])), bin_width=BIN)
    short = write_nwb(tmp_path / "short_behavior.nwb", behavior_span=(0.0, 1.0))
    with pytest.raises(DataFormatError, match="'hand_velocity' spans 0.0..1.0 s but trial 1 needs"):
        read_nwb(short, bin_width=BIN, behavior=["hand_velocity"])
    twice = write_nwb(tmp_path / "two_velocities.nwb", acquired_velocity=True)
    with pytest.raises(DataFormatError, match="several time series are called 'hand_velocity'"):
        read_nwb(twice, bin_width=BIN, behavior=["hand_velocity"])
    assert read_nwb(twice, bin_width=BIN, behavior=["acquisition/hand_velocity"]).behavior.shape == (3, 9, 1)


def test_missing_pynwb_names_the_extra(nwb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynwb", None)  # makes `import pynwb` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "ldns_fast\[nwb\]"'):
        read_nwb(nwb_path, bin_width=BIN)
