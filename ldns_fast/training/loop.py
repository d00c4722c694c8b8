"""One training stage: epochs of shuffled mini-batches, validation, early stopping, atomic checkpoints and
exact resume.

The budget is a number of optimisation steps (``StageConfig.steps``, rounded up to whole epochs) or of
epochs; the learning rate warms up linearly and decays on a cosine over that budget. With a validation
split the weights with the lowest validation loss are kept (and become the stage's result), and with
``patience`` the stage stops once the validation loss has not improved for that many steps.
Randomness (batch order, dropout masks, diffusion noise) comes from generators re-seeded from
``(seed, epoch, rank)`` at every epoch, so resuming from an epoch checkpoint continues exactly as an
uninterrupted run would. Multi-GPU runs start through ``torchrun``: each rank takes a slice of every
epoch's permutation and the model is wrapped in DistributedDataParallel; rank 0 writes checkpoints and
the training log (:mod:`ldns_fast.training.log`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ldns_fast.config import StageConfig, describe_differences
from ldns_fast.kernels.ops import COMPILE_OPTIONS
from ldns_fast.run import Batch

from .ema import EMA
from .heap import retained_heap
from .log import TrainingLog

LossFn = Callable[[nn.Module, Batch, torch.Generator], dict[str, torch.Tensor]]


@dataclass
class DistributedContext:
    """Rank, world size and device of this process (a single process without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(device: str | torch.device) -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device)
    if world_size == 1:
        return DistributedContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return DistributedContext(rank, world_size, device)


def epoch_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator for one epoch of one rank (independent streams per epoch and rank; any seed in
    ``[0, 2**64)``: the stream's seed wraps modulo 2**64, as torch does for negative ones)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch * 7919 + rank) % 2**64)


def require_settings(path: Path, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a CheckpointError listing the differences unless the checkpoint ``path`` was written with the
    ``current`` settings (``stored``: the config it holds)."""
    if stored != current:
        raise CheckpointError(
            f"checkpoint {path} was written with other settings "
            f"({describe_differences(stored, current, 'the checkpoint', 'this run')}); "
            f"resume with the settings of the checkpoint or start a new output folder"
        )


def cosine_with_warmup(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def iterate_batches(data: Batch, batch_size: int, order: torch.Tensor) -> Any:
    """Yield dicts of rows ``order[i : i + batch_size]`` of every tensor in ``data``."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield {key: value[idx] for key, value in data.items()}


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class StageTrainer:
    """Train ``model`` with ``loss_fn`` under ``cfg``; checkpoints go to ``checkpoint_path``.

    ``config`` (a plain dict) is stored in the checkpoint; ``extra`` holds further tensors/values to
    store (e.g. latent normalisation statistics). With ``ema`` settings ``(max_decay, power)`` an EMA of
    the weights is kept, validated on and saved. ``log`` receives every epoch's record (rank 0).
    """

    def __init__(
        self,
        kind: str,
        model: nn.Module,
        loss_fn: LossFn,
        cfg: StageConfig,
        checkpoint_path: str | Path,
        config: dict[str, Any],
        seed: int,
        context: DistributedContext,
        ema: tuple[float, float] | None = None,
        compile: bool = False,
        progress: bool = True,
        extra: dict[str, Any] | None = None,
        log: TrainingLog | None = None,
    ) -> None:
        self.kind, self.cfg, self.seed, self.ctx = kind, cfg, seed, context
        self.model = model.to(context.device)
        self.loss_fn = loss_fn
        self.path = Path(checkpoint_path)
        self.config = config
        self.extra = extra or {}
        self.progress = progress and context.is_main
        self.log = log if context.is_main else None
        self.ema = EMA(self.model, *ema) if ema is not None else None
        wrapped: nn.Module = self.model
        if context.world_size > 1:
            wrapped = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[context.device.index] if context.device.type == "cuda" else None
            )
        self.train_model = torch.compile(wrapped, options=COMPILE_OPTIONS) if compile else wrapped
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None
        self.start_epoch = 0

    def _steps_per_epoch(self, n_train: int) -> int:
        per_rank = math.ceil(n_train / self.ctx.world_size)
        return math.ceil(per_rank / self.cfg.batch_size)

    def _state(self) -> dict[str, Any]:
        """The weights that make the stage's result: the model's and, when kept, the EMA's (copies)."""
        def copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in state.items()}

        ema = None if self.ema is None else {"shadow": copy(self.ema.shadow.state_dict()), "step": self.ema.step}
        return {"model": copy(self.model.state_dict()), "ema": ema}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def resume(self) -> bool:
        """Restore from the checkpoint; return True if it holds a finished stage."""
        record = load_checkpoint(self.path, self.kind, ("model", "optimizer", "epoch", "history", "complete", "best"))
        require_settings(self.path, record["config"], self.config)
        self.model.load_state_dict(record["model"])
        self.optimizer.load_state_dict(record["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(record["ema"])
        self.history = list(record["history"])
        self.best = record["best"]
        self.start_epoch = int(record["epoch"]) + 1
        return bool(record["complete"])

    def _save(self, epoch: int, complete: bool) -> None:
        if not self.ctx.is_main:
            return
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "history": self.history,
            "complete": complete,
            "best": self.best,
            **self.extra,
        }
        save_checkpoint(self.path, self.kind, payload, self.config)

    @torch.no_grad()
    def validate(self, val: Batch) -> dict[str, float]:
        """Mean loss and loss parts over ``val`` (EMA weights when kept), with a fixed generator."""
        model = self.ema.shadow if self.ema is not None else self.model
        model.eval()
        gen = epoch_generator(self.seed, -1, 0, self.ctx.device)
        sums: dict[str, float] = {}
        count = 0
        for batch in iterate_batches(val, self.cfg.batch_size, torch.arange(next(iter(val.values())).shape[0])):
            n = next(iter(batch.values())).shape[0]
            for key, value in self.loss_fn(model, _to(batch, self.ctx.device), gen).items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            count += n
        return {key: total / max(count, 1) for key, total in sums.items()}

    def _track_best(self, record: dict[str, float], step: int) -> bool:
        """Keep the weights of the best validation loss so far; True when patience has run out."""
        cfg, best = self.cfg, self.best
        val = record["val_loss"]
        if not math.isfinite(val):
            raise FloatingPointError(f"{self.kind}: the validation loss is {val} at epoch {record['epoch']}")
        if best is None or val < best["val_loss"] - cfg.min_delta * abs(best["val_loss"]):
            self.best = {"val_loss": val, "epoch": record["epoch"], "step": step, **self._state()}
            return False
        return cfg.patience > 0 and step - best["step"] >= cfg.patience

    def fit(self, train: Batch, val: Batch | None) -> list[dict[str, float]]:
        """Run the remaining budget; returns the per-epoch history (step, learning rate, train and val losses).

        With ``val``, the stage ends on the weights of its lowest validation loss (``keep_best``). Runs inside
        :func:`~ldns_fast.training.heap.retained_heap` (on glibc, each step reuses the last one's memory).
        """
        with retained_heap():
            return self._fit(train, val)

    def _fit(self, train: Batch, val: Batch | None) -> list[dict[str, float]]:
        cfg = self.cfg
        n_train = next(iter(train.values())).shape[0]
        steps = self._steps_per_epoch(n_train)
        epochs = cfg.budget_epochs(steps)
        schedule = cosine_with_warmup(epochs * steps, cfg.warmup_fraction)
        bar = tqdm(range(self.start_epoch, epochs), desc=self.kind, disable=not self.progress,
                   initial=self.start_epoch, total=epochs)
        if self.log is not None:
            self.log.start(self.kind, self.start_epoch, epochs, steps)
        for epoch in bar:
            began = time.perf_counter()
            self.train_model.train()
            gen = epoch_generator(self.seed, epoch, 0, torch.device("cpu"))
            order = torch.randperm(n_train, generator=gen)[self.ctx.rank :: self.ctx.world_size]
            noise_gen = epoch_generator(self.seed, epoch, self.ctx.rank + 1, self.ctx.device)
            sums: dict[str, float] = {}
            for i, batch in enumerate(iterate_batches(train, cfg.batch_size, order)):
                lr = cfg.lr * schedule(epoch * steps + i)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                losses = self.loss_fn(self.train_model, _to(batch, self.ctx.device), noise_gen)
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            step = (epoch + 1) * steps
            record = {"epoch": epoch, "step": step, "lr": lr, **{f"train_{k}": v / steps for k, v in sums.items()}}
            last = epoch == epochs - 1
            stop = False
            if val is not None and ((epoch + 1) % cfg.val_every == 0 or last):
                record.update({f"val_{k}": v for k, v in self.validate(val).items()})
                stop = self._track_best(record, step) if cfg.keep_best else False
            self.history.append(record)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "val_loss")})
            done = last or stop
            if self.log is not None:
                seconds = time.perf_counter() - began
                self.log.epoch({**record, "seconds": seconds, "samples_per_s": n_train / seconds}, done)
            if done and cfg.keep_best and self.best is not None:
                self._load_state(self.best)
            if (epoch + 1) % cfg.checkpoint_every == 0 or done:
                self._save(epoch, complete=done)
            if done:
                break
        if self.log is not None:
            self.log.close()
        return self.history
