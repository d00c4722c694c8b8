"""The train, sample and evaluate CLIs under bad input, kill -9 and concurrent use (issue 15), and the
training run's logs and config (issue 17).

Every refusal is one line ``error: ...`` with exit status 2, no traceback, checked before any work and
with nothing written; outputs are never silently replaced nor written by two processes at once; long
requests are batched within a bin budget or refused with their memory estimate. A training run killed
at any point and resumed ends with the weights and metrics.csv of an uninterrupted one, and its
config.yaml repeats it bitwise.

A few cases run in subprocesses (the real exit status and stderr, kill -9); the rest call ``main``
in-process.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ldns_fast.data import DataFormatError, read_dataset, write_dataset
from ldns_fast.evaluate import main as evaluate_main
from ldns_fast.lock import exclusive_lock
from ldns_fast.metrics import compare
from ldns_fast.models import Autoencoder, AutoencoderConfig
from ldns_fast.pipeline import LDNS
from ldns_fast.sample import main as sample_main
from ldns_fast.train import main as train_main
from ldns_fast.run import read_metrics

QUICK = ["--steps", "2", "--no-progress"]


def run_cli(module: str, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def one_error_line(stderr: str) -> str:
    """The single ``error: ...`` line of a refusal (fails on a traceback or anything else printed)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def refused(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a CLI ``main`` in-process; assert exit status 2 with one error line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    return one_error_line(capsys.readouterr().err)


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every file under ``folder`` (hidden ones too) with its modification time."""
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """Data files a user may pass by mistake: not HDF5, HDF5 without spikes, corrupt HDF5 metadata."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "text.h5").write_text("spikes,bin_width\n1,0.01\n")
    import h5py

    with h5py.File(folder / "no_spikes.h5", "w") as f:
        f.attrs["bin_width"] = 0.01
    write_dataset(folder / "all_train.h5", np.ones((4, 5, 6), np.uint8), bin_width=0.01, split=np.zeros(4, np.uint8))
    corrupt = write_dataset(folder / "corrupt.h5", np.ones((4, 5, 3), np.uint8), bin_width=0.01)
    raw = bytearray(corrupt.read_bytes())
    raw[raw.index(b"TREE")] ^= 0xFF  # the root group's B-tree signature: h5py raises a RuntimeError
    corrupt.write_bytes(bytes(raw))
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture
def truncated_run(tiny_run, tmp_path: Path) -> Path:
    run = shutil.copytree(tiny_run[0], tmp_path / "truncated")
    data = (run / "diffusion.pt").read_bytes()
    (run / "diffusion.pt").write_bytes(data[: len(data) // 2])
    return run


# ------------------------------------------------------------------------------------------ sample


def test_sample_refuses_to_replace_an_existing_file_without_overwrite(tiny_run, tmp_path: Path) -> None:
    run, _ = tiny_run
    out = tmp_path / "real_data.h5"
    out.write_bytes(b"a real dataset")
    result = run_cli("ldns_fast.sample", run, "--n", "2", *QUICK, "--out", out)
    assert result.returncode == 2
    assert "exists; pass --overwrite" in one_error_line(result.stderr)
    assert out.read_bytes() == b"a real dataset"
    assert sample_main([str(run), "--n", "2", *QUICK, "--out", str(out), "--overwrite"]) == 0
    assert read_dataset(out).n_trials == 2


@pytest.mark.parametrize("case, argv, message", [
    ("missing run", ["{missing}", "--n", "2"], "diffusion.pt does not exist"),
    ("truncated checkpoint", ["{truncated}", "--n", "2"], "truncated, corrupt"),
    ("not HDF5 --like", ["{run}", "--like", "{text}"], "not an HDF5 file"),
    ("--like without spikes", ["{run}", "--like", "{no_spikes}"], "'spikes' is missing"),
    ("--like with corrupt metadata", ["{run}", "--like", "{corrupt}"], "cannot be read as HDF5"),
    ("empty --like split", ["{run}", "--like", "{all_train}", "--split", "val", "--n", "2"], "holds no trials"),
    ("--n 0", ["{run}", "--n", "0"], "n must be a positive number"),
    ("--n abc", ["{run}", "--n", "abc"], "invalid int value"),
    ("--steps 0", ["{run}", "--n", "2", "--steps", "0"], "num_inference_steps"),
    ("--length 0", ["{run}", "--n", "2", "--length", "0"], "length must be a positive integer"),
    ("--lengths 3 0", ["{run}", "--lengths", "3", "0"], "lengths must hold n=2 positive integers"),
    ("--batch-size 0", ["{run}", "--n", "2", "--batch-size", "0"], "batch_size must be a positive integer"),
    ("--max-bins 0", ["{run}", "--n", "2", "--max-bins", "0"], "max_bins must be a positive integer"),
    ("--seed -1", ["{run}", "--n", "2", "--seed", "-1"], "seed must be an integer in [0, 2**64)"),
    ("--seed 2**64", ["{run}", "--n", "2", "--seed", str(2**64)], "seed must be an integer in [0, 2**64)"),
    ("--guidance-scale nan", ["{run}", "--n", "2", "--guidance-scale", "nan"], "guidance_scale must be a finite"),
    ("--eta 2", ["{run}", "--n", "2", "--sampler", "ddim", "--eta", "2"], "eta must lie in [0, 1]"),
    ("--device foo", ["{run}", "--n", "2", "--device", "foo"], "unknown device 'foo'"),
    ("--device cuda:99", ["{run}", "--n", "2", "--device", "cuda:99"], "cuda:99"),
    ("--out a folder", ["{run}", "--n", "2", "--out", "{folder}"], "is a folder"),
    ("--out under a file", ["{run}", "--n", "2", "--out", "{text}/s.h5"], "is a file, not a folder"),
])
def test_sample_refusals_are_one_line_exit_2_and_write_nothing(
    case: str, argv: list[str], message: str, tiny_run, truncated_run: Path, bad_files: dict[str, Path],
    tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run, data = tiny_run
    folder = tmp_path / "existing_folder"
    folder.mkdir()
    names = {"run": run, "data": data, "missing": tmp_path / "no_run", "truncated": truncated_run, "folder": folder,
             **bad_files}
    before, run_before = listing(tmp_path), listing(run)
    out = ["--out", str(tmp_path / "s.h5")] if "--out" not in argv else []
    line = refused(sample_main, [a.format(**names) for a in argv] + out + ["--no-progress"], capsys)
    assert message in line, line
    assert listing(tmp_path) == before and listing(run) == run_before


def test_sample_checks_its_output_before_loading_or_sampling(
    tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = tiny_run

    def no_work(*args, **kwargs):
        raise AssertionError("the run was loaded before the output was checked")

    monkeypatch.setattr(LDNS, "load", no_work)
    assert "is a folder" in refused(sample_main, [run, "--n", "2", "--out", tmp_path], capsys)
    real_access = os.access
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    # Root ignores permission bits, so a folder without write permission is simulated.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    line = refused(sample_main, [run, "--n", "2", "--out", read_only / "s.h5"], capsys)
    assert f"the folder {read_only} is not writable" in line
    (tmp_path / "locked.h5").write_bytes(b"keep")
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "locked.h5" else real_access(p, mode))
    line = refused(sample_main, [run, "--n", "2", "--out", tmp_path / "locked.h5", "--overwrite"], capsys)
    assert "locked.h5 is read-only" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_sample_refuses_a_read_only_folder(tiny_run, tmp_path: Path) -> None:
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    result = run_cli("ldns_fast.sample", tiny_run[0], "--n", "2", *QUICK, "--out", read_only / "s.h5")
    assert result.returncode == 2 and "is not writable" in one_error_line(result.stderr)


def test_sample_streams_batches_within_the_bin_budget(tiny_run, tmp_path: Path) -> None:
    run, _ = tiny_run
    lengths = [16, 3, 9, 5, 12]
    args = [str(run), "--lengths", *map(str, lengths), "--seed", "4", "--max-bins", "20", *QUICK]
    assert sample_main([*args, "--out", str(tmp_path / "s.h5")]) == 0
    written = read_dataset(tmp_path / "s.h5")
    expected = LDNS.load(run).sample(len(lengths), lengths=lengths, steps=2, seed=4, max_bins=20)
    assert written.lengths.tolist() == lengths
    np.testing.assert_allclose(written.latents, expected.latents.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(written.spikes, expected.spikes.transpose(1, 2).numpy())


def test_sample_refuses_a_trial_beyond_the_bin_budget_with_its_memory_estimate(
    tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, _ = tiny_run
    line = refused(sample_main, [run, "--lengths", "100", "--max-bins", "64", "--out", tmp_path / "s.h5"], capsys)
    assert "a trial of 100 bins exceeds max_bins=64" in line and "GiB" in line
    line = refused(sample_main, [run, "--lengths", "10000000", "--out", tmp_path / "s.h5"], capsys)  # default budget
    model = LDNS.load(run)
    assert f"would need about {model.batch_bytes(10_000_000) / 2**30:.2g} GiB" in line
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("case, argv, message", [
    ("not HDF5 --real", ["--generated", "{data}", "--real", "{text}"], "not an HDF5 file"),
    ("corrupt --generated", ["--generated", "{corrupt}", "--real", "{data}"], "cannot be read as HDF5"),
    ("missing --generated", ["--generated", "{folder}/none.h5", "--real", "{data}"], "no such file"),
    ("other neuron count", ["--generated", "{corrupt_free}", "--real", "{data}", "--split", "all"],
     "neuron counts differ"),
    ("missing checkpoint", ["--checkpoint", "{folder}"], "diffusion.pt does not exist"),
    ("truncated checkpoint", ["--checkpoint", "{truncated}"], "truncated, corrupt"),
    ("bad --real with checkpoint", ["--checkpoint", "{run}", "--real", "{no_spikes}"], "'spikes' is missing"),
    ("--steps 0", ["--checkpoint", "{run}", "--real", "{data}", "--steps", "0"], "num_inference_steps"),
    ("--seed -1", ["--checkpoint", "{run}", "--real", "{data}", "--seed", "-1"], "seed"),
    ("--bootstrap -1", ["--generated", "{data}", "--real", "{data}", "--bootstrap", "-1"], "--bootstrap must be"),
    ("--device foo", ["--checkpoint", "{run}", "--device", "foo"], "unknown device 'foo'"),
    ("--out a file", ["--generated", "{data}", "--real", "{data}", "--out", "{text}"], "is a file"),
    ("--out under a file", ["--generated", "{data}", "--real", "{data}", "--out", "{text}/eval"],
     "is a file, not a folder"),
])
def test_evaluate_refusals_are_one_line_exit_2_and_write_nothing(
    case: str, argv: list[str], message: str, tiny_run, truncated_run: Path, bad_files: dict[str, Path],
    tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run, data = tiny_run
    folder = tmp_path / "folder"
    folder.mkdir()
    other = write_dataset(tmp_path / "other.h5", np.ones((4, 16, 3), np.uint8), bin_width=0.01)
    names = {"run": run, "data": data, "truncated": truncated_run, "folder": folder, "corrupt_free": other,
             **bad_files}
    before, run_before = listing(tmp_path), listing(run)
    out = ["--out", str(tmp_path / "eval")] if "--out" not in argv else []
    line = refused(evaluate_main, [a.format(**names) for a in argv] + out + ["--no-plots"], capsys)
    assert message in line, line
    assert listing(tmp_path) == before and listing(run) == run_before


def test_evaluate_checks_its_output_folder_before_any_work(
    tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, data = tiny_run
    out_file = tmp_path / "metrics"
    out_file.write_text("not a folder")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(LDNS, "load", no_work)
    monkeypatch.setattr("ldns_fast.evaluate.read_dataset", no_work)
    assert "is a file" in refused(evaluate_main, ["--checkpoint", run, "--out", out_file], capsys)
    assert "is a file" in refused(evaluate_main, ["--generated", data, "--real", data, "--out", out_file], capsys)


def test_evaluate_refusal_in_a_subprocess_has_no_traceback(bad_files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("ldns_fast.evaluate", "--generated", bad_files["corrupt"], "--real", bad_files["corrupt"],
                     "--out", tmp_path / "eval")
    assert result.returncode == 2
    assert "corrupt.h5: cannot be read as HDF5" in one_error_line(result.stderr)
    assert not (tmp_path / "eval").exists()



# ------------------------------------------------------------------------------------------- train


def train_argv(tiny_run, out: Path, *extra: object) -> list[str]:
    """``train`` with the tiny run's settings (its config.yaml) into ``out``."""
    return [str(a) for a in ("--config", tiny_run[0] / "config.yaml", "--out", out, "--device", "cpu",
                             "--no-progress", *extra)]


def contents(folder: Path) -> list[tuple[str, int | None]]:
    """Every file under ``folder`` with its modification time, and every subfolder (by name only: taking
    and releasing the run folder's lock touches its modification time, not its contents)."""
    return sorted((str(p.relative_to(folder)), None if p.is_dir() else p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture
def run_copy(tiny_run, tmp_path: Path) -> Path:
    return shutil.copytree(tiny_run[0], tmp_path / "run_copy")


@pytest.mark.parametrize("case, argv, message", [
    ("not HDF5 --data", ["--data", "{text}"], "not an HDF5 file"),
    ("--data without spikes", ["--data", "{no_spikes}"], "'spikes' is missing"),
    ("--data with corrupt metadata", ["--data", "{corrupt}"], "cannot be read as HDF5"),
    ("missing --data", ["--data", "{folder}/none.h5"], "none.h5: no such file"),
    ("bad model setting", ["--set", "autoencoder.ssm_mode=dlpr"], "mode must be 'dplr' or 'diag', got 'dlpr'"),
    ("unknown key", ["--set", "autoencoder.hiden=8"], "config.autoencoder has unknown keys ['hiden']"),
    ("a string for a number", ["--set", "autoencoder_training.lr=fast"], "lr must be a number, got 'fast'"),
    ("negative grad_clip", ["--set", "autoencoder_training.grad_clip=-1"],
     "grad_clip must be a finite number in (0, inf)"),
    ("lr=inf", ["--set", "diffusion_training.lr=.inf"], "lr must be a finite number in (0, inf), got inf"),
    ("batch_size 0", ["--set", "diffusion_training.batch_size=0"], "batch_size must be a positive integer, got 0"),
    ("--ae-steps -5", ["--ae-steps", "-5"], "StageConfig.steps must be an integer >= 0, got -5"),
    ("--seed -1", ["--seed", "-1"], "seed must be an integer in [0, 2**64), got -1"),
    ("seed 2**70", ["--set", f"seed={2**70}"], "seed must be an integer in [0, 2**64)"),
    ("seed abc", ["--set", "seed=abc"], "config.seed must be an integer, got 'abc'"),
    ("extreme bin_width", ["--set", "data.source=lorenz", "--set", "data.lorenz.bin_width=1e300"],
     "LorenzConfig.bin_width must be one number of seconds in [1e-06, 3600], got 1e+300"),
    ("--device foo", ["--device", "foo"], "unknown device 'foo'"),
    ("--device cuda:99", ["--device", "cuda:99"], "cuda:99"),
    ("--out a file", ["--out", "{text}"], "output folder {text} is a file"),
    ("--out under a file", ["--out", "{text}/run"], "is a file, not a folder"),
    ("--resume and --overwrite", ["--resume", "--overwrite"], "not allowed with argument"),
    ("existing run", ["--out", "{run_copy}"], "already holds autoencoder.pt, diffusion.pt; pass --resume"),
    ("--overwrite with a typo", ["--out", "{run_copy}", "--overwrite", "--set", "autoencoder.ssm_mode=dlpr"],
     "got 'dlpr'"),
    ("--overwrite with bad data", ["--out", "{run_copy}", "--overwrite", "--data", "{corrupt}"],
     "cannot be read as HDF5"),
    ("truncated checkpoint on --resume", ["--out", "{truncated}", "--resume"], "truncated, corrupt"),
    ("--resume changing the settings", ["--out", "{run_copy}", "--resume", "--set", "autoencoder.hidden=16"],
     "the command line changes them (autoencoder.hidden: 8 in config.yaml, 16 in the command line)"),
    ("--stage diffusion without an autoencoder", ["--stage", "diffusion"], "--stage diffusion needs a trained"),
])
def test_train_refusals_are_one_line_exit_2_and_change_nothing(
    case: str, argv: list[str], message: str, tiny_run, run_copy: Path, truncated_run: Path,
    bad_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    names = {"run_copy": run_copy, "truncated": truncated_run, "folder": folder, **bad_files}
    before, run_before = contents(tmp_path), contents(tiny_run[0])
    argv = [a.format(**names) for a in argv]
    line = refused(train_main, train_argv(tiny_run, tmp_path / "new", *argv), capsys)
    assert message.format(**names) in line, line
    assert contents(tmp_path) == before and contents(tiny_run[0]) == run_before


def test_train_checks_a_read_only_output_folder_first(
    tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    line = refused(train_main, train_argv(tiny_run, read_only / "run"), capsys)
    assert f"the folder {read_only} is not writable" in line and not list(read_only.iterdir())


def test_train_refusal_in_a_subprocess_has_no_traceback(tiny_run, tmp_path: Path) -> None:
    result = run_cli("ldns_fast.train", *train_argv(tiny_run, tmp_path / "run", "--set", "autoencoder.ssm_mode=dlpr"))
    assert result.returncode == 2 and "got 'dlpr'" in one_error_line(result.stderr)
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_run_and_removes_what_the_new_autoencoder_invalidates(
    tiny_run, run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    old = load_checkpoint(run_copy / "autoencoder.pt", "autoencoder", ("model",))["model"]
    assert train_main(train_argv(tiny_run, run_copy, "--overwrite", "--stage", "autoencoder", "--seed", "5")) == 0
    assert f"removed {run_copy / 'diffusion.pt'}: it was trained on the autoencoder this run replaced" in \
        capsys.readouterr().err
    new = load_checkpoint(run_copy / "autoencoder.pt", "autoencoder", ("model",))["model"]
    assert not torch.equal(old["inp.weight"], new["inp.weight"]) and not (run_copy / "diffusion.pt").exists()
    assert [(r["stage"], r["epoch"]) for r in read_metrics(run_copy / "metrics.csv")] == [("autoencoder", 0)]


def test_train_and_sample_refuse_an_output_that_another_process_is_writing(
    tiny_run, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = contents(run_copy)
    with exclusive_lock(run_copy, folder=True):
        line = refused(train_main, train_argv(tiny_run, run_copy, "--resume"), capsys)
        assert f"{run_copy} is being written by another process (pid {os.getpid()})" in line
    assert contents(run_copy) == before
    out = tmp_path / "s.h5"
    with exclusive_lock(out):
        line = refused(sample_main, [run_copy, "--n", "2", *QUICK, "--out", out], capsys)
        assert f"{out} is being written by another process" in line
    assert not out.exists()


def test_load_refuses_an_autoencoder_the_denoiser_was_not_trained_on(run_copy: Path) -> None:
    record = load_checkpoint(run_copy / "autoencoder.pt", "autoencoder", ("model",))
    payload = {k: v for k, v in record.items() if k not in ("format", "kind", "versions", "config")}
    LDNS.load(run_copy)  # the run's own pair loads
    tweaked = {**record["model"], "inp.bias": record["model"]["inp.bias"] + 1e-3}  # same shapes, other weights
    other_size = Autoencoder(AutoencoderConfig(n_neurons=6, hidden=16, latent=2, d_state=4, n_blocks=1)).state_dict()
    for weights in (tweaked, other_size):
        save_checkpoint(run_copy / "autoencoder.pt", "autoencoder", {**payload, "model": weights}, record["config"])
        with pytest.raises(CheckpointError, match=r"autoencoder.pt is not the autoencoder .*diffusion.pt was trained"):
            LDNS.load(run_copy)

    save_checkpoint(run_copy / "autoencoder.pt", "autoencoder", payload, record["config"])
    diffusion = load_checkpoint(run_copy / "diffusion.pt", "diffusion")
    older = {k: v for k, v in diffusion.items() if k not in ("format", "kind", "versions", "config",
                                                              "autoencoder_sha256")}
    save_checkpoint(run_copy / "diffusion.pt", "diffusion", older, diffusion["config"])
    with pytest.warns(UserWarning, match="does not record which autoencoder it was trained on"):
        LDNS.load(run_copy)  # written before the record existed: loads, with a warning


def test_bin_widths_out_of_range_or_not_numbers_are_refused(tmp_path: Path) -> None:
    counts = np.ones((4, 5, 3), np.uint8)
    for bad, shown in ((1e300, "1e+300"), (1e-9, "1e-09"), ("0.01", "'0.01'"), (True, "True")):
        message = re.escape(f" must be one number of seconds in [1e-06, 3600], got {shown}")
        with pytest.raises(DataFormatError, match="'bin_width'" + message):
            write_dataset(tmp_path / "d.h5", counts, bin_width=bad)
        with pytest.raises(ValueError, match="^bin_width" + message):
            compare(counts, counts, bad)
    assert not list(tmp_path.iterdir())


def test_evaluate_checkpoint_draws_the_training_curves(tiny_run, tmp_path: Path) -> None:
    run, _ = tiny_run
    assert evaluate_main(["--checkpoint", str(run), "--steps", "2", "--bootstrap", "0", "--out",
                          str(tmp_path / "eval")]) == 0
    curves = tmp_path / "eval" / "training_curves.png"
    assert curves.stat().st_size > 1000
    assert str(curves) in json.loads((tmp_path / "eval" / "metrics.json").read_text())["plots"]


# ----------------------------------------------------------------- kill -9, resume and reproduction

KILL_FLAGS = ["--ae-epochs", "6", "--diffusion-epochs", "6", "--set", "autoencoder_training.checkpoint_every=2",
              "--set", "diffusion_training.checkpoint_every=3"]


def start_training(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ldns_fast.train", *map(str, args)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, path: Path) -> None:
    """``kill -9`` the training ``process`` as soon as ``path`` appears (it must still be running)."""
    while not path.exists():
        assert process.poll() is None, f"ended before {path.name} appeared: {process.communicate()[1][-2000:]}"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor a run's checkpoints hold (model, EMA, latent statistics), by name."""
    ae = load_checkpoint(run / "autoencoder.pt", "autoencoder", ("model",))
    diff = load_checkpoint(run / "diffusion.pt", "diffusion", ("model", "ema"))
    return {**{f"ae.{k}": v for k, v in ae["model"].items()}, **{f"dn.{k}": v for k, v in diff["model"].items()},
            **{f"ema.{k}": v for k, v in diff["ema"]["shadow"].items()},
            "latent_mean": diff["latent_mean"], "latent_std": diff["latent_std"]}


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in rows]


@pytest.fixture(scope="module")
def interrupted(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One uninterrupted CLI run, and the same run killed with kill -9 during the autoencoder stage, between
    the stages and during the denoiser stage, each time resumed with ``--resume`` (settings from its
    config.yaml)."""
    root = tmp_path_factory.mktemp("interrupted")
    straight, killed = root / "straight", root / "killed"
    tensorboard = ["--log", "tensorboard"] if _has_tensorboard() else []
    result = run_cli("ldns_fast.train", *train_argv(tiny_run, straight, *KILL_FLAGS, *tensorboard))
    assert result.returncode == 0, result.stderr[-2000:]

    process = start_training(*train_argv(tiny_run, killed, *KILL_FLAGS))
    kill_when(process, killed / "autoencoder.pt")  # saved after epoch 2 of 6
    states = [load_checkpoint(killed / "autoencoder.pt", "autoencoder", ("complete",))["complete"]]
    resume = ["--out", killed, "--resume", "--device", "cpu", "--no-progress"]
    kill_when(start_training(*resume), killed / "autoencoder_report.json")  # written once the autoencoder is done
    states.append((killed / "diffusion.pt").exists())  # the denoiser saves after its epoch 3 of 6
    kill_when(start_training(*resume), killed / "diffusion.pt")
    states.append(load_checkpoint(killed / "diffusion.pt", "diffusion", ("complete",))["complete"])
    final = start_training(*resume)
    assert final.wait() == 0, final.communicate()[1][-2000:]
    return {"straight": straight, "killed": killed, "stdout": result.stdout, "states": states,
            "tensorboard": bool(tensorboard)}


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_run_killed_and_resumed_three_times_ends_with_the_weights_of_an_uninterrupted_one(interrupted) -> None:
    assert interrupted["states"] == [False, False, False]  # killed mid-autoencoder, between stages, mid-denoiser
    straight, killed = weights(interrupted["straight"]), weights(interrupted["killed"])
    assert straight.keys() == killed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, killed[name]), name
    for name in ("autoencoder.pt", "diffusion.pt"):
        histories = [load_checkpoint(run / name, name[:-3], ("history",))["history"]
                     for run in (interrupted["straight"], interrupted["killed"])]
        assert histories[0] == histories[1]
    assert not list(interrupted["killed"].glob(".*"))  # no lock or temporary file left behind


def test_metrics_csv_lists_every_epoch_once_after_kills_and_resumes(interrupted) -> None:
    straight = read_metrics(interrupted["straight"] / "metrics.csv")
    killed = read_metrics(interrupted["killed"] / "metrics.csv")
    epochs = [("autoencoder", e) for e in range(6)] + [("diffusion", e) for e in range(6)]
    assert [(r["stage"], r["epoch"]) for r in straight] == epochs == [(r["stage"], r["epoch"]) for r in killed]
    assert without_timing(straight) == without_timing(killed)
    ae = load_checkpoint(interrupted["straight"] / "autoencoder.pt", "autoencoder", ("history",))["history"]
    assert without_timing(straight[:6]) == [{"stage": "autoencoder", **record} for record in ae]
    assert {"train_poisson", "val_smooth", "lr", "step"} <= straight[0].keys()
    assert all(r["seconds"] > 0 and r["samples_per_s"] > 0 for r in killed)


def test_without_a_terminal_each_epoch_prints_a_line(interrupted) -> None:
    lines = [line for line in interrupted["stdout"].splitlines() if " epoch " in line]
    expected = [f"{stage} epoch {e}/6  step {3 * e}/18" for stage in ("autoencoder", "diffusion") for e in range(1, 7)]
    assert [line.split("  train_loss")[0] for line in lines] == expected
    assert all(" val_loss " in line and " elapsed " in line and " ETA " in line for line in lines)


def test_log_tensorboard_writes_the_metrics_as_scalars(interrupted) -> None:
    if not interrupted["tensorboard"]:
        pytest.skip("the optional extra 'tensorboard' is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = read_metrics(interrupted["straight"] / "metrics.csv")
    for stage in ("autoencoder", "diffusion"):
        events = EventAccumulator(str(interrupted["straight"] / "tensorboard" / stage))
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars(f"{stage}/val_loss")]
        assert logged == [(r["step"], pytest.approx(r["val_loss"])) for r in rows if r["stage"] == stage]


def test_a_runs_config_yaml_reproduces_it_bitwise(interrupted, tmp_path: Path) -> None:
    straight = interrupted["straight"]
    again = tmp_path / "again"
    result = run_cli("ldns_fast.train", "--config", straight / "config.yaml", "--out", again, "--device", "cpu",
                     "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (again / "config.yaml").read_text() == (straight / "config.yaml").read_text()
    first, second = weights(straight), weights(again)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
