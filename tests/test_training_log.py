"""The training log: metrics.csv rows (read back, restarted on resume), stdout lines, TensorBoard scalars."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from ldns_fast.run import METRICS_FILE, read_metrics
from ldns_fast.training.log import TrainingLog


def row(epoch: int, steps: int = 3, **losses: float) -> dict[str, float]:
    """An epoch's record as the stage loop makes it, plus timing."""
    return {"epoch": epoch, "step": (epoch + 1) * steps, "lr": 0.001 / (epoch + 1),
            **(losses or {"train_loss": 1.0 / (epoch + 1), "val_loss": 2.0 / (epoch + 1)}),
            "seconds": 0.5, "samples_per_s": 40.0}


def test_rows_are_read_back_exactly_and_new_loss_columns_extend_the_header(tmp_path: Path) -> None:
    log = TrainingLog(tmp_path, console=False)
    log.start("autoencoder", 0, 2, 3)
    first = row(0, train_loss=0.1 + 0.2, train_poisson=1 / 3, val_loss=2.5)
    log.epoch(first, done=False)
    log.epoch(row(1, train_loss=0.25, train_poisson=0.125, val_loss=2.0, val_poisson=1e-300), done=True)
    log.start("diffusion", 0, 1, 3)
    log.epoch(row(0), done=True)
    rows = read_metrics(tmp_path / METRICS_FILE)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("autoencoder", 0), ("autoencoder", 1), ("diffusion", 0)]
    assert rows[0] == {"stage": "autoencoder", **first}  # floats round-trip exactly; missing parts stay missing
    assert rows[1]["val_poisson"] == 1e-300 and "val_poisson" not in rows[0] and "train_poisson" not in rows[2]
    with open(tmp_path / METRICS_FILE, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["stage", "epoch", "step", "lr", "train_loss", "train_poisson", "val_loss", "val_poisson",
                      "seconds", "samples_per_s"]


def test_a_stage_restarting_at_epoch_e_replaces_its_rows_from_e_on_and_all_later_stages(tmp_path: Path) -> None:
    log = TrainingLog(tmp_path, console=False)
    log.start("autoencoder", 0, 4, 3)
    for epoch in range(4):
        log.epoch(row(epoch), done=epoch == 3)
    log.start("diffusion", 0, 3, 3)
    for epoch in range(2):  # killed during epoch 2
        log.epoch(row(epoch), done=False)

    def stages_and_epochs() -> list[tuple[str, int]]:
        return [(r["stage"], r["epoch"]) for r in read_metrics(tmp_path / METRICS_FILE)]

    resumed = TrainingLog(tmp_path, console=False)
    resumed.start("diffusion", 1, 3, 3)  # the checkpoint held epoch 0: epoch 1 runs again
    resumed.epoch(row(1, train_loss=5.0), done=False)
    assert stages_and_epochs() == [("autoencoder", e) for e in range(4)] + [("diffusion", 0), ("diffusion", 1)]
    assert read_metrics(tmp_path / METRICS_FILE)[-1]["train_loss"] == 5.0

    resumed.start("autoencoder", 2, 4, 3)  # an autoencoder resumed at epoch 2 invalidates everything after it
    assert len(stages_and_epochs()) == 6  # ... once its first row is written (a refused run keeps the old rows)
    resumed.epoch(row(2), done=False)
    assert stages_and_epochs() == [("autoencoder", 0), ("autoencoder", 1), ("autoencoder", 2)]
    resumed.start("autoencoder", 0, 4, 3)  # a fresh run (--overwrite) starts a new log
    resumed.epoch(row(0), done=False)
    assert stages_and_epochs() == [("autoencoder", 0)]


def test_stdout_has_a_line_per_epoch_and_at_most_about_100_for_long_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = TrainingLog(tmp_path, console=True)
    log.start("autoencoder", 0, 3, 4)
    for epoch in range(3):
        log.epoch(row(epoch, steps=4), done=epoch == 2)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        ["autoencoder epoch 1/3", "step 4/12"], ["autoencoder epoch 2/3", "step 8/12"],
        ["autoencoder epoch 3/3", "step 12/12"],
    ]
    assert re.fullmatch(r".*  train_loss 0\.5  val_loss 1  lr 0\.0005  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d", lines[1])

    log.start("diffusion", 5, 1000, 2)  # resumed at epoch 5 of 1000: every 10th epoch, the first and the last
    for epoch in range(5, 1000):
        log.epoch(row(epoch, steps=2), done=epoch == 999)
    epochs = [int(line.split()[2].split("/")[0]) for line in capsys.readouterr().out.splitlines()]
    assert epochs == [6, *range(10, 1001, 10)]

    quiet = TrainingLog(tmp_path / "quiet", console=False)
    quiet.start("autoencoder", 0, 2, 1)
    quiet.epoch(row(0, steps=1), done=False)
    assert capsys.readouterr().out == ""


def test_tensorboard_gets_the_same_scalars_and_drops_re_run_steps_on_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional extra 'tensorboard' is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TrainingLog(tmp_path, console=False, tensorboard=True)
    log.start("diffusion", 0, 3, 3)
    for epoch in range(2):  # killed after epoch 1's row, before its checkpoint
        log.epoch(row(epoch), done=False)
    log.close()
    resumed = TrainingLog(tmp_path, console=False, tensorboard=True)
    resumed.start("diffusion", 1, 3, 3)
    for epoch in (1, 2):
        resumed.epoch(row(epoch, train_loss=10.0 + epoch, val_loss=1.0), done=epoch == 2)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "diffusion"))
    events.Reload()
    train = [(e.step, e.value) for e in events.Scalars("diffusion/train_loss")]
    assert train == [(3, 1.0), (6, 11.0), (9, 12.0)]  # the first run's step 6 was purged
    assert [e.step for e in events.Scalars("diffusion/samples_per_s")] == [3, 6, 9]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"--log tensorboard needs the tensorboard package: pip install"):
        TrainingLog(tmp_path, tensorboard=True)
