"""Run configuration: nested dataclasses with presets, serialised to YAML beside every checkpoint.

``RunConfig`` gathers the data source, both models, the noise schedule and the two training stages.
Presets: ``"cpu"`` (the default: the small Lorenz set, S4D layers, weaker latent penalties and a
v-predicting denoiser; trains in minutes on 2 cores)
and ``"paper"`` (the published Lorenz configuration: 5000 x 256 x 128, DPLR S4, long training; GPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ldns_fast.diffusion import NoiseSchedule
from ldns_fast.models import AutoencoderConfig, DenoiserConfig
from ldns_fast.validation import require_positive_ints


@dataclass
class DataConfig:
    """Where the spikes come from: ``source="lorenz"`` (a preset plus overrides) or an HDF5 path."""

    source: str = "lorenz"
    lorenz_preset: str = "small"
    lorenz: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageConfig:
    """Optimisation of one training stage (AdamW, linear warm-up then cosine decay)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    val_every: int = 1
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        require_positive_ints(self, "epochs", "batch_size", "val_every", "checkpoint_every")
        if not self.lr > 0:
            raise ValueError(f"{type(self).__name__}.lr must be positive, got {self.lr}")


@dataclass
class DiffusionStageConfig(StageConfig):
    """Denoiser training: loss (``"mse"`` or ``"smooth_l1"``) and EMA of the weights."""

    loss: str = "mse"
    smooth_l1_beta: float = 0.04
    ema_max_decay: float = 0.9999
    ema_power: float = 2 / 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("mse", "smooth_l1"):
            raise ValueError(f"DiffusionStageConfig.loss must be 'mse' or 'smooth_l1', got {self.loss!r}")


@dataclass
class RunConfig:
    """Everything a training run needs; the models' data-dependent sizes are filled in from the data."""

    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_training: StageConfig = field(default_factory=lambda: StageConfig(grad_clip=2.0))
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    diffusion_training: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    seed: int = 0


def preset(name: str) -> RunConfig:
    """A named configuration: ``"cpu"`` (default) or ``"paper"``."""
    if name == "cpu":
        # Measured on 2 cores (benchmarks/results/quality_vs_speed_lorenz_cpu.md): at this training budget the
        # paper's latent penalties (0.01 / 0.01) over-smooth the rates, and an epsilon-predicting denoiser
        # draws latents ~17% too narrow; weaker penalties and v-prediction fix both.
        return RunConfig(
            data=DataConfig(lorenz_preset="small"),
            autoencoder=AutoencoderConfig(hidden=128, n_blocks=4, ssm_mode="diag", l2_weight=0.001,
                                          smooth_weight=0.001),
            autoencoder_training=StageConfig(epochs=60, batch_size=64, grad_clip=2.0),
            denoiser=DenoiserConfig(hidden=64, n_blocks=4, ssm_mode="diag"),
            schedule=NoiseSchedule(prediction_type="v"),
            diffusion_training=DiffusionStageConfig(epochs=300, batch_size=64),
        )
    if name == "paper":
        return RunConfig(
            data=DataConfig(lorenz_preset="paper"),
            autoencoder=AutoencoderConfig(),
            autoencoder_training=StageConfig(epochs=200, batch_size=512, grad_clip=2.0),
            denoiser=DenoiserConfig(),
            diffusion_training=DiffusionStageConfig(epochs=1000, batch_size=512),
        )
    raise ValueError(f"unknown preset {name!r}; choose 'cpu' or 'paper'")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as plain dicts, lists and scalars."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build the dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys raise a ValueError naming them (a typo must not be silently ignored).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            kwargs[name] = from_dict(type(current), value, f"{where}.{name}")
        elif isinstance(current, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def merge(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``config`` with nested ``overrides`` applied (e.g. ``{"autoencoder": {"hidden": 64}}``)."""

    def deep_update(base: dict, upd: dict) -> dict:
        out = dict(base)
        for key, value in upd.items():
            nested = isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = deep_update(base[key], value) if nested else value
        return out

    return from_dict(RunConfig, deep_update(to_dict(config), overrides))


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML file of (possibly partial) settings on top of ``base`` (default: the cpu preset)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    name = data.pop("preset", None) if isinstance(data, dict) else None
    return merge(base or preset(name or "cpu"), data)
