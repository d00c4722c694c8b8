"""The stage loop's budget, early stopping and best-weights rule, and their exact resume (on a toy model and
on an autoencoder, whose resumed run must equal an uninterrupted one)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ldns_fast.checkpoint import CheckpointError, load_checkpoint
from ldns_fast.config import StageConfig
from ldns_fast.models import Autoencoder, AutoencoderConfig, autoencoder_loss
from ldns_fast.training.loop import DistributedContext, StageTrainer, epoch_generator


class Scalar(nn.Module):
    """One weight ``w``; the loss of a batch is ``mean((w - y)^2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"loss": (model.w - batch["y"]).square().mean()}


# Training pulls w from 0 towards 1; the validation loss is lowest at w = 0.3 and rises after it.
TRAIN = {"y": torch.ones(16)}
VAL = {"y": torch.full((4,), 0.3)}


def val_loss(t: StageTrainer) -> float:
    """The validation loss of ``t``'s current weights, computed as the loop does."""
    return float(loss_fn(t.model, VAL, None)["loss"].detach())


def trainer(path: Path, **settings: object) -> StageTrainer:
    cfg = StageConfig(**{"steps": 200, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0, "warmup_fraction": 0.0,
                         "grad_clip": 10.0, **settings})
    return StageTrainer("toy", Scalar(), loss_fn, cfg, path, {"toy": 1}, seed=0, context=DistributedContext(),
                        progress=False)


def test_step_budget_rounds_up_to_whole_epochs() -> None:
    assert StageConfig(steps=100).budget_epochs(7) == 15
    assert StageConfig(steps=3).budget_epochs(7) == 1
    assert StageConfig(epochs=9, steps=0).budget_epochs(7) == 9
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        StageConfig(patience=-1)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        StageConfig(steps=2.5)


def test_without_early_stopping_the_whole_budget_runs_and_the_best_weights_are_kept(tmp_path: Path) -> None:
    t = trainer(tmp_path / "a.pt")
    history = t.fit(TRAIN, VAL)
    assert len(history) == 50 and history[-1]["step"] == 200  # 4 steps per epoch
    best = min(history, key=lambda h: h["val_loss"])
    assert best["epoch"] < 45  # the validation loss rose after its minimum
    assert val_loss(t) == best["val_loss"]
    record = load_checkpoint(tmp_path / "a.pt", "toy", ("model", "best"))
    assert record["complete"] and record["best"]["epoch"] == best["epoch"]
    assert torch.equal(record["model"]["w"], t.model.w.detach())


def test_keep_best_off_ends_on_the_last_weights(tmp_path: Path) -> None:
    t = trainer(tmp_path / "a.pt", keep_best=False)
    history = t.fit(TRAIN, VAL)
    assert val_loss(t) == history[-1]["val_loss"]
    assert history[-1]["val_loss"] > min(h["val_loss"] for h in history)


def test_patience_stops_after_that_many_steps_without_improvement(tmp_path: Path) -> None:
    t = trainer(tmp_path / "a.pt", patience=12)
    history = t.fit(TRAIN, VAL)
    best = min(history, key=lambda h: h["val_loss"])
    assert history[-1]["step"] - best["step"] == 12  # validated every 4 steps: stopped at the first check >= 12
    assert len(history) < 50
    assert val_loss(t) == best["val_loss"]
    assert load_checkpoint(tmp_path / "a.pt", "toy", ("complete",))["complete"]


def test_resume_keeps_the_early_stopping_state(tmp_path: Path) -> None:
    straight = trainer(tmp_path / "a.pt", patience=12)
    straight.fit(TRAIN, VAL)

    class Killed(Exception):
        pass

    interrupted = trainer(tmp_path / "b.pt", patience=12)
    best_epoch = min(straight.history, key=lambda h: h["val_loss"])["epoch"]

    def save_then_die(epoch: int, complete: bool) -> None:  # dies after the best epoch, before the stop
        StageTrainer._save(interrupted, epoch, complete)
        if epoch == best_epoch + 1:
            raise Killed

    interrupted._save = save_then_die
    with pytest.raises(Killed):
        interrupted.fit(TRAIN, VAL)
    resumed = trainer(tmp_path / "b.pt", patience=12)
    assert resumed.resume() is False
    resumed.fit(TRAIN, VAL)
    assert torch.equal(straight.model.w, resumed.model.w)
    assert straight.history == resumed.history
    assert resumed.resume() is True  # the stopped stage is complete


def test_a_non_finite_validation_loss_stops_with_a_clear_error(tmp_path: Path) -> None:
    t = trainer(tmp_path / "a.pt")
    with pytest.raises(FloatingPointError, match="validation loss is nan"):
        t.fit(TRAIN, {"y": torch.full((4,), float("nan"))})


def test_any_seed_below_2_to_the_64_trains(tmp_path: Path) -> None:
    t = StageTrainer("toy", Scalar(), loss_fn, StageConfig(epochs=2, batch_size=4), tmp_path / "a.pt", {"toy": 1},
                     seed=2**64 - 1, context=DistributedContext(), progress=False)
    assert len(t.fit(TRAIN, VAL)) == 2  # the per-epoch stream seeds wrap modulo 2**64 instead of overflowing
    # ... as torch wraps negative seeds: the validation stream of seed 0 (epoch -1) is the one runs always had
    stream = epoch_generator(0, -1, 0, torch.device("cpu"))
    assert torch.equal(torch.rand(4, generator=stream), torch.rand(4, generator=torch.Generator().manual_seed(-7919)))


# ---------------------------------------------------------------- exact resume of a real model


def tiny_trainer(path: Path, epochs: int, config: AutoencoderConfig) -> StageTrainer:
    from ldns_fast.config import StageConfig

    torch.manual_seed(0)
    model = Autoencoder(config)
    return StageTrainer(
        "autoencoder", model, lambda m, b, g: autoencoder_loss(m, config, b["spikes"], b["mask"], g),
        StageConfig(epochs=epochs, batch_size=8), path, {"epochs": epochs}, seed=5,
        context=DistributedContext(), ema=(0.99, 2 / 3), progress=False,
    )


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    config = AutoencoderConfig(n_neurons=6, hidden=8, latent=4, n_blocks=1, d_state=4, ssm_mode="diag", backend="torch")
    g = torch.Generator().manual_seed(1)
    train = {"spikes": torch.poisson(torch.rand(20, 6, 16, generator=g), generator=g), "mask": torch.ones(20, 16)}

    straight = tiny_trainer(tmp_path / "a.pt", 3, config)
    straight.fit(train, None)

    class Killed(Exception):
        pass

    interrupted = tiny_trainer(tmp_path / "b.pt", 3, config)

    def save_then_die_after_epoch_1(epoch: int, complete: bool) -> None:
        StageTrainer._save(interrupted, epoch, complete)
        if epoch == 1:
            raise Killed

    interrupted._save = save_then_die_after_epoch_1
    with pytest.raises(Killed):
        interrupted.fit(train, None)

    resumed = tiny_trainer(tmp_path / "b.pt", 3, config)
    assert resumed.resume() is False and resumed.start_epoch == 2
    resumed.fit(train, None)

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.shadow.parameters(), resumed.ema.shadow.parameters()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    config = AutoencoderConfig(n_neurons=6, hidden=8, latent=4, n_blocks=1, d_state=4, ssm_mode="diag")
    trainer = tiny_trainer(tmp_path / "a.pt", 1, config)
    trainer.fit({"spikes": torch.zeros(4, 6, 8), "mask": torch.ones(4, 8)}, None)
    other = tiny_trainer(tmp_path / "a.pt", 2, config)
    with pytest.raises(CheckpointError, match=r"written with other settings \(epochs: 1 in the checkpoint, 2 in this run\)"):
        other.resume()
