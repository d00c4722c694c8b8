"""What a training run reports as it goes: ``RUN/metrics.csv``, a line per epoch on stdout, TensorBoard.

``metrics.csv`` holds one row per stage and epoch: :data:`LEAD_COLUMNS`, the stage's train and
validation losses and their parts (``train_loss``, ``train_poisson``, ..., ``val_loss``, ...; a stage
without a part leaves its cell empty), then :data:`TAIL_COLUMNS`. Rows are appended and flushed at the
end of every epoch, so ``tail -f`` and pandas read the file during the run. A stage that starts at epoch
``e`` (0, or where a resumed checkpoint left off) drops its own rows from epoch ``e`` on and those of the
stages after it when it writes its first row, so a killed and resumed run lists every epoch exactly once
(and a refused or killed ``--overwrite`` keeps the old rows until the new run has one).
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from ldns_fast.atomic import atomic_write
from ldns_fast.run import METRICS_FILE, read_metrics

TENSORBOARD_DIR = "tensorboard"
LEAD_COLUMNS = ("stage", "epoch", "step", "lr")
TAIL_COLUMNS = ("seconds", "samples_per_s")  # wall time of the epoch (training and validation), throughput
MAX_LINES = 100  # per stage on stdout: long stages print every k-th epoch


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The header for ``rows``: lead columns, every loss column in order of appearance, tail columns."""
    middle = dict.fromkeys(k for row in rows for k in row if k not in LEAD_COLUMNS + TAIL_COLUMNS)
    return [*LEAD_COLUMNS, *middle, *TAIL_COLUMNS]


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class TrainingLog:
    """The reports of one run folder: ``metrics.csv`` always, per-epoch lines on stdout with ``console``
    and TensorBoard event files under ``RUN/tensorboard/STAGE`` with ``tensorboard``.

    Raises:
        ValueError: ``tensorboard`` without the tensorboard package installed.
    """

    def __init__(self, run_dir: str | Path, console: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.console = console
        self._writer_class = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("--log tensorboard needs the tensorboard package: "
                                 "pip install 'ldns_fast[tensorboard]'") from err
            self._writer_class = SummaryWriter
        self._writer: Any = None
        self._stage: dict[str, Any] = {}
        self._kept: list[dict[str, Any]] | None = None  # the rows to keep when the stage writes its first

    def start(self, stage: str, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """A stage begins at ``start_epoch`` of ``epochs``: its first row replaces those written again."""
        rows = read_metrics(self.path) if self.path.exists() else []
        first = next((i for i, row in enumerate(rows) if row["stage"] == stage), len(rows))
        kept = rows[:first] + [r for r in rows[first:] if r["stage"] == stage and r["epoch"] < start_epoch]
        self._kept = kept if kept != rows else None
        self._stage = {"name": stage, "start": start_epoch, "epochs": epochs, "steps": steps_per_epoch,
                       "began": time.perf_counter(), "every": max(1, math.ceil(epochs / MAX_LINES))}
        if self._writer_class is not None:
            self.close()
            self._writer = self._writer_class(
                log_dir=str(self.path.parent / TENSORBOARD_DIR / stage),
                purge_step=start_epoch * steps_per_epoch + 1 if start_epoch else None,  # drop re-run epochs
            )

    def epoch(self, row: dict[str, Any], done: bool) -> None:
        """Record one epoch's ``row`` (a history record plus :data:`TAIL_COLUMNS`); ``done``: the stage's last."""
        stage = self._stage
        row = {"stage": stage["name"], **row}
        if self._kept is not None:
            self._rewrite(self._kept + [row])
            self._kept = None
        else:
            self._append(row)
        if self._writer is not None:
            for key, value in row.items():
                if key not in ("stage", "epoch", "step"):
                    self._writer.add_scalar(f"{stage['name']}/{key}", value, row["step"])
            self._writer.flush()
        epoch = row["epoch"]
        if self.console and (done or epoch == stage["start"] or (epoch + 1) % stage["every"] == 0):
            print(self._line(row), file=sys.stdout, flush=True)

    def close(self) -> None:
        """Close the TensorBoard writer (if any)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _line(self, row: dict[str, Any]) -> str:
        """``stage epoch e/E step s/S train_loss ... val_loss ... lr ... elapsed H:MM:SS ETA H:MM:SS``."""
        stage = self._stage
        done_here = row["epoch"] + 1 - stage["start"]
        elapsed = time.perf_counter() - stage["began"]
        eta = elapsed / done_here * (stage["epochs"] - row["epoch"] - 1)
        losses = "  ".join(f"{k} {row[k]:.4g}" for k in ("train_loss", "val_loss") if k in row)
        return (f"{stage['name']} epoch {row['epoch'] + 1}/{stage['epochs']}  step {row['step']}/"
                f"{stage['epochs'] * stage['steps']}  {losses}  lr {row['lr']:.3g}  elapsed {_clock(elapsed)}  "
                f"ETA {_clock(eta)}")

    def _append(self, row: dict[str, Any]) -> None:
        """Append ``row`` and flush; the whole file is rewritten when the row brings new columns."""
        if not self.path.exists():
            self._rewrite([row])
            return
        with open(self.path, newline="") as f:
            header = next(csv.reader(f), [])
        if set(row) - set(header):
            self._rewrite(read_metrics(self.path) + [row])
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, header).writerow(row)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, _columns(rows))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text.getvalue()))
