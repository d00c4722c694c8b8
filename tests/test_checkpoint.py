"""Checkpoint files (:mod:`ldns_fast.checkpoint`): round trip with the config inside, clear errors for
corrupt, partial or foreign files, no pickled objects, and atomic writes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_with_its_config_inside(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    weights = {"w": torch.randn(3, 4)}
    save_checkpoint(path, "autoencoder", {"model": weights, "epoch": 4}, {"a": 1})
    record = load_checkpoint(path, "autoencoder", ("model",))
    assert torch.equal(record["model"]["w"], weights["w"]) and record["epoch"] == 4
    assert record["config"] == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no YAML copy
    assert record["versions"]["torch"] == str(torch.__version__)


def test_corrupt_partial_or_foreign_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, "autoencoder", {"model": {"w": torch.randn(100, 100)}}, {})
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is truncated, corrupt"):
        load_checkpoint(truncated, "autoencoder")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "autoencoder")
    with pytest.raises(CheckpointError, match="holds a 'autoencoder', expected a 'diffusion'"):
        load_checkpoint(path, "diffusion")
    with pytest.raises(CheckpointError, match=r"lacks the keys \['ema'\]"):
        load_checkpoint(path, "autoencoder", ("ema",))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="no format/kind header"):
        load_checkpoint(foreign, "autoencoder")


def test_checkpoints_refuse_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "kind": "autoencoder", "config": {}, "payload": Path("x")}, path)
    with pytest.raises(CheckpointError, match="truncated, corrupt or not an ldns_fast checkpoint"):
        load_checkpoint(path, "autoencoder")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, "autoencoder", {"model": {"w": torch.ones(2)}}, {})
    before = path.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, "autoencoder", {"model": {"w": torch.zeros(2)}}, {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
