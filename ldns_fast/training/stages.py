"""The two LDNS training stages: the autoencoder on spikes, then the denoiser on normalised latents."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ldns_fast.config import RunConfig, to_dict
from ldns_fast.data import SpikeData
from ldns_fast.diffusion import DiffusionSchedule
from ldns_fast.models import Autoencoder, Denoiser, autoencoder_loss
from ldns_fast.run import (
    AUTOENCODER_DIGEST, AUTOENCODER_FILE, DIFFUSION_FILE, SPIKE_HISTORY_FILE, LatentStats, encode_all,
    spike_batches, weights_digest,
)
from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel

from .log import TrainingLog
from .loop import Batch, DistributedContext, StageTrainer

M = TypeVar("M", bound=torch.nn.Module)

def remove_stale(out_dir: Path, autoencoder: Autoencoder) -> list[Path]:
    """Remove the denoiser and spike-history checkpoints of ``out_dir`` that record another autoencoder
    (left by the run an ``--overwrite`` replaced); returns them. Unreadable files and files without the
    record (written before it existed) are left to the stages."""
    digest, removed = weights_digest(autoencoder.state_dict()), []
    for name, kind in ((DIFFUSION_FILE, "diffusion"), (SPIKE_HISTORY_FILE, "spike_history")):
        path = out_dir / name
        try:
            recorded = load_checkpoint(path, kind).get(AUTOENCODER_DIGEST, digest) if path.exists() else digest
        except CheckpointError:
            continue
        if recorded != digest:
            path.unlink()
            removed.append(path)
    return removed


def seeded(build: Callable[..., M], *args: Any, seed: int) -> M:
    """``build(*args)`` with torch's global generator seeded by ``seed`` (restored afterwards), so a model's
    initial weights follow from the run's seed alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args)


def autoencoder_stage_config(run: RunConfig) -> dict:
    """The settings an autoencoder checkpoint depends on (resume refuses any other)."""
    return {k: v for k, v in to_dict(run).items() if k in ("data", "autoencoder", "autoencoder_training", "seed")}


def diffusion_stage_config(run: RunConfig) -> dict:
    """The settings a diffusion checkpoint depends on: all but the spike-history model's (fitted after it)."""
    return {k: v for k, v in to_dict(run).items() if k != "spike_history"}


def train_autoencoder(
    run: RunConfig, data: SpikeData, out_dir: Path, ctx: DistributedContext,
    resume: bool = False, compile: bool = False, progress: bool = True, log: TrainingLog | None = None,
) -> tuple[Autoencoder, list[dict[str, float]]]:
    """Train (or resume, or reload when finished) the autoencoder; returns it and its history."""
    cfg = run.autoencoder
    trainer = StageTrainer(
        "autoencoder", seeded(Autoencoder, cfg, seed=run.seed),
        lambda m, b, g: autoencoder_loss(m, cfg, b["spikes"], b["mask"], g),
        run.autoencoder_training, out_dir / AUTOENCODER_FILE, autoencoder_stage_config(run), run.seed, ctx,
        compile=compile, progress=progress, log=log,
    )
    if resume and trainer.path.exists() and trainer.resume():
        return trainer.model, trainer.history
    train = spike_batches(data, "train")
    if train is None:
        raise ValueError("the dataset has no training trials (split code 0)")
    history = trainer.fit(train, spike_batches(data, "val"))
    return trainer.model, history


def diffusion_loss(
    model: torch.nn.Module, schedule: DiffusionSchedule, loss: str, beta: float, cond_drop: float,
    batch: Batch, gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Denoising loss on valid bins: random timesteps, noise and independent dropout of the vector and
    behaviour conditions (probability ``cond_drop`` each, for classifier-free guidance) from ``gen``."""
    x0, mask = batch["latents"], batch["mask"]
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=gen, device=gen.device)
    noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    keep = torch.rand(2, x0.shape[0], generator=gen, device=gen.device).to(x0.device) >= cond_drop
    t = t.to(x0.device)
    prediction = model(schedule.add_noise(x0, noise, t), t, mask, batch.get("cond"), batch.get("behavior"), *keep)
    target = schedule.target(x0, noise, t)
    if loss == "mse":
        per_entry = (prediction - target).square()
    else:
        per_entry = F.smooth_l1_loss(prediction, target, beta=beta, reduction="none")
    weight = mask[:, None, :].expand_as(per_entry)
    return {"loss": (per_entry * weight).sum() / weight.sum().clamp_min(1)}


def train_diffusion(
    run: RunConfig, autoencoder: Autoencoder, data: SpikeData, out_dir: Path, ctx: DistributedContext,
    resume: bool = False, compile: bool = False, progress: bool = True, log: TrainingLog | None = None,
) -> tuple[Denoiser, list[dict[str, float]]]:
    """Encode the data, normalise the latents, train the denoiser; returns the EMA denoiser.

    The checkpoint records the autoencoder's :func:`weights_digest` (``LDNS.load`` checks the pair).
    """
    batches = {name: spike_batches(data, name) for name in ("train", "val")}
    conditions = ("cond", "behavior") if run.denoiser.conditional else ()
    latents = {
        name: None if b is None else {
            "latents": encode_all(autoencoder, b, 256, ctx.device), "mask": b["mask"],
            **{k: b[k] for k in conditions if k in b},
        }
        for name, b in batches.items()
    }
    stats = LatentStats.measure(latents["train"]["latents"], latents["train"]["mask"])
    for part in latents.values():
        if part is not None:
            part["latents"] = stats.normalise(part["latents"], part["mask"])
    schedule = DiffusionSchedule(run.schedule)
    cfg = run.diffusion_training
    trainer = StageTrainer(
        "diffusion", seeded(Denoiser, run.denoiser, seed=(run.seed + 1) % 2**64),
        lambda m, b, g: diffusion_loss(m, schedule, cfg.loss, cfg.smooth_l1_beta, run.denoiser.cond_drop, b, g),
        cfg, out_dir / DIFFUSION_FILE, diffusion_stage_config(run), run.seed, ctx,
        ema=(cfg.ema_max_decay, cfg.ema_power), compile=compile, progress=progress, log=log,
        extra={"latent_mean": stats.mean, "latent_std": stats.std, "bin_width": float(data.bin_width), "n_bins": int(data.n_bins),
               AUTOENCODER_DIGEST: weights_digest(autoencoder.state_dict())},
    )
    if not (resume and trainer.path.exists() and trainer.resume()):
        trainer.fit(latents["train"], latents["val"])
    return trainer.ema.shadow, trainer.history


def fit_spike_history(
    autoencoder: Autoencoder, data: SpikeData, out_dir: Path, device: torch.device,
    config: SpikeHistoryConfig | None = None,
) -> tuple[SpikeHistoryModel, list[float]]:
    """Fit the spike-history observation model on the training split's spikes and autoencoder rates.

    Written to ``out_dir/spike_history.pt``; returns the model and its loss history.
    """
    config = config or SpikeHistoryConfig()
    batch = spike_batches(data, "train")
    if batch is None:
        raise ValueError("the dataset has no training trials (split code 0)")
    latents = encode_all(autoencoder, batch, 256, device)
    with torch.no_grad():
        rates = torch.cat([autoencoder.decode(z.to(device)).cpu() for z in latents.split(256)])
    model = SpikeHistoryModel.from_config(data.n_neurons, config)
    losses = model.fit(batch["spikes"], rates.clamp_min(1e-6), batch["mask"], config)
    save_checkpoint(out_dir / SPIKE_HISTORY_FILE, "spike_history", {
        "model": model.state_dict(), "losses": losses, AUTOENCODER_DIGEST: weights_digest(autoencoder.state_dict()),
    }, to_dict(config))
    return model, losses
