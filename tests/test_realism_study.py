"""The realism study script (benchmarks/realism_study.py) end to end on a tiny conditional run trained on a tiny
spiking-network reach dataset: rows, columns, targets, determinism, and the floor row against naive formulas."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ldns_fast.data import NetworkReachConfig, read_dataset, write_dataset, write_network_reach
from ldns_fast.train import main as train_main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "realism_study.py"
# short trials: the drive leads the movement by 20 ms (not 100) and is tuned more deeply, so 42 training
# trials of 12 neurons decode the direction (about 18 deg, chance 90)
NETWORK = NetworkReachConfig(n_trials=60, n_bins=24, n_recorded=12, n_excitatory=40, n_inhibitory=10, burn_in=0.05,
                             drive_lead=0.02, tuning=3.0, seed=3)
TINY = {"autoencoder.hidden": 16, "autoencoder.d_state": 8, "autoencoder.latent": 4, "denoiser.hidden": 16,
        "denoiser.d_state": 8, "autoencoder_training.batch_size": 16, "diffusion_training.batch_size": 16,
        "denoiser.cond_drop": 0.1, "spike_history.max_iter": 10}


def _load_script():
    spec = importlib.util.spec_from_file_location("realism_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def network_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny conditional run (with a spike-history model) on a tiny network dataset: ``(run_dir, data_file)``."""
    root = tmp_path_factory.mktemp("network-run")
    data = write_network_reach(root / "network.h5", NETWORK)
    flags = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    assert train_main(["--out", str(root / "run"), "--data", str(data), "--device", "cpu", "--spike-history",
                       "--ae-epochs", "2", "--diffusion-epochs", "2", "--no-progress", *flags]) == 0
    return root / "run", data


def _naive_floor(real: np.ndarray, other: np.ndarray, bin_width: float) -> tuple[float, float]:
    """RMSE of per-neuron mean rates (Hz) and Pearson r of the pairwise bin-count correlations (float64 loops)."""
    rate = lambda x: x.astype(np.float64).mean((0, 1)) / bin_width  # noqa: E731
    rmse = math.sqrt(np.mean((rate(real) - rate(other)) ** 2))
    iu = np.triu_indices(real.shape[2], 1)
    corr = [np.corrcoef(x.reshape(-1, x.shape[2]).astype(np.float64).T)[iu] for x in (real, other)]
    keep = np.isfinite(corr[0]) & np.isfinite(corr[1])
    return rmse, float(np.corrcoef(corr[0][keep], corr[1][keep])[0, 1])


def test_realism_study_writes_every_row_and_target(network_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data_file = network_run
    study = _load_script()
    out = tmp_path / "study"
    assert study.main([str(run), str(data_file), "--out", str(out), "--steps", "2", "--scales", "1", "2",
                       "--bootstrap", "2", "--train-command", "python -m ldns_fast.data.network X",
                       "--train-command", "python -m ldns_fast.train --data X"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    data = read_dataset(data_file)
    train, test = data.split("train"), data.split("test")

    expected = ["real test vs real train", "autoencoder reconstruction", "generated (sde-dpm++-2, guidance 1)",
                "generated (sde-dpm++-2, guidance 2)", "autoencoder reconstruction + spike history",
                "generated (sde-dpm++-2, guidance 1) + spike history"]
    assert list(result["rows"]) == expected
    for name, row in result["rows"].items():
        assert row["n_trials"] == (test.n_trials if name.startswith("real") else train.n_trials)
        assert 0 <= row["decoder_error_deg"] <= 180, name
        for column in study.COLUMNS:
            assert row[column]["point"] is not None and math.isfinite(row[column]["point"]), (name, column)
        assert f"| {name} |" in md
    assert result["sample_inputs"] == ["conditions"]  # the behaviour channels only with --with-behavior
    assert 45 < result["decoder"]["chance"] < 135

    floor = result["rows"]["real test vs real train"]
    rmse_rate, r_corr = _naive_floor(train.spikes, test.spikes, data.bin_width)
    assert floor["rmse_mean_rate"]["point"] == pytest.approx(rmse_rate, rel=1e-6)
    assert floor["pearson_correlation"]["point"] == pytest.approx(r_corr, rel=1e-6)
    assert floor["decoder_error_deg"] < result["decoder"]["chance"]  # the network's neurons are tuned

    report = result["autoencoder_report"]
    assert report["split"] == "val" and math.isfinite(report["bits_per_spike_vs_psth"])
    commands = "    python -m ldns_fast.data.network X\n    python -m ldns_fast.train --data X\n    python benchmarks/"
    assert md.startswith("# Realism study") and commands in md
    assert "bits/spike vs mean rates" in md
    assert {t["target"] for t in result["targets"]} >= {"decoder error < 2x real and < 15 deg",
                                                         "decoder error < 20 deg"}
    for t in result["targets"]:
        if t.get("note") is None:
            assert t["met"] in (True, False), t  # every row the targets need was measured
        assert f"| {t['target']} | {t['row']} |" in md

    again = study.study(run, data_file, steps=2, scales=[1.0, 2.0], bootstrap=2)
    strip = lambda rows: {k: {c: v for c, v in r.items() if c != "seconds"} for k, r in rows.items()}  # noqa: E731
    assert strip(again["rows"]) == strip(result["rows"])  # seeded: the same trials and metrics


def test_realism_study_refuses_data_that_do_not_fit_the_run(network_run: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run, data_file = network_run
    study = _load_script()
    other = write_dataset(tmp_path / "other.h5", np.zeros((4, 24, 5), np.uint8), bin_width=0.005)
    with pytest.raises(SystemExit):
        study.main([str(run), str(other), "--out", str(tmp_path / "x")])
    assert "has 5 neurons, the run" in capsys.readouterr().err
    data = read_dataset(data_file)
    no_test = write_dataset(tmp_path / "train_only.h5", data.spikes, bin_width=data.bin_width,
                            conditions=data.conditions, split=np.zeros(data.n_trials, np.uint8))
    with pytest.raises(SystemExit):
        study.main([str(run), str(no_test), "--out", str(tmp_path / "x")])
    assert "holds no test trials" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_realism_study_without_conditions_has_no_decoder_column(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data_file = tiny_run  # Lorenz-like counts, unconditional run, no spike-history model
    study = _load_script()
    assert study.main([str(run), str(data_file), "--out", str(tmp_path / "s"), "--steps", "2", "--scales", "1",
                       "--bootstrap", "0"]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert list(result["rows"]) == ["real test vs real train", "autoencoder reconstruction",
                                    "generated (sde-dpm++-2, guidance 1)"]
    assert result["decoder"] is None and all("decoder_error_deg" not in row for row in result["rows"].values())
    assert result["sample_inputs"] == [] and not result["spike_history_model"]
    history = [t for t in result["targets"] if "spike history" in t["row"]]
    assert history and all(t["value"] is None and t["met"] is None for t in history)
    md = (tmp_path / "s.md").read_text()
    assert "not applicable (the conditions are not 2-d directions)" in md and "| not measured |" in md
