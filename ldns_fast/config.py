"""Run configuration: nested dataclasses with presets, written to a run's ``config.yaml`` and read back.

``RunConfig`` gathers the data source, both models, the noise schedule and the two training stages.
Settings read from YAML or dicts are checked against each field's annotation (a typo or a value of the
wrong type is a ValueError naming its key); ``1e-4`` reads as a number (YAML 1.2, not 1.1's string).
The models' sizes that follow from the data (:data:`DATA_SIZES`) are filled in by :meth:`RunConfig.resolve`;
a run's ``config.yaml`` holds the resolved config.
Presets: ``"cpu"`` (the default: the small Lorenz set, S4D layers, weaker latent penalties and a
v-predicting denoiser; trains in minutes on 2 cores)
and ``"paper"`` (the published Lorenz configuration: 5000 x 256 x 128, DPLR S4, long training; GPU).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection

import yaml

from ldns_fast.data import LorenzConfig
from ldns_fast.diffusion import NoiseSchedule
from ldns_fast.models import AutoencoderConfig, DenoiserConfig
from ldns_fast.spike_history import SpikeHistoryConfig
from ldns_fast.validation import check_seed, is_integer, is_number, require_positive_ints, require_reals

if TYPE_CHECKING:
    from ldns_fast.data import SpikeData


@dataclass
class DataConfig:
    """Where the spikes come from: ``source="lorenz"`` (the synthetic dataset ``lorenz``) or an HDF5 path.

    ``lorenz`` holds every setting of the synthetic dataset. It starts from the Lorenz preset
    ``lorenz_preset`` (``"small"`` or ``"paper"``): built without ``lorenz`` (or with ``None``), it is that
    preset; the ``lorenz`` keys of a settings mapping or file apply on top of that preset (missing keys take
    the preset's values, not ``LorenzConfig``'s defaults), and an override that names ``lorenz_preset``
    (``--set data.lorenz_preset=paper``) starts ``lorenz`` afresh from it, with only that override's own
    ``lorenz`` keys on top. ``lorenz`` may also be given as a mapping of such keys.
    """

    source: str = "lorenz"
    lorenz_preset: str = "small"
    lorenz: LorenzConfig | None = None  # None: the preset's settings (always a LorenzConfig once built)

    def __post_init__(self) -> None:
        try:
            base = LorenzConfig.preset(self.lorenz_preset)
        except ValueError as err:
            raise ValueError(f"data.lorenz_preset: {err}") from None
        if self.lorenz is None:
            self.lorenz = base
        elif isinstance(self.lorenz, dict):
            self.lorenz = from_dict(LorenzConfig, {**dataclasses.asdict(base), **self.lorenz}, "data.lorenz")
        elif not isinstance(self.lorenz, LorenzConfig):
            raise ValueError(f"data.lorenz must be a LorenzConfig or a mapping, got {type(self.lorenz).__name__}")

    @classmethod
    def nested_defaults(cls, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Defaults of the nested sections of the settings mapping ``settings`` (see :func:`field_values`):
        ``lorenz`` keys apply on top of the preset ``settings["lorenz_preset"]`` (default ``"small"``)."""
        name = settings.get("lorenz_preset", cls.lorenz_preset)
        try:
            return {"lorenz": dataclasses.asdict(LorenzConfig.preset(name))}
        except (TypeError, ValueError):
            return {}  # not a preset name: __post_init__ says so


@dataclass
class StageConfig:
    """Optimisation of one training stage (AdamW, linear warm-up then cosine decay over the budget).

    The budget is ``steps`` optimisation steps (rounded up to whole epochs) when ``steps > 0``, else
    ``epochs`` epochs. With a validation split the weights of the lowest validation loss are the stage's
    result (``keep_best``), and ``patience > 0`` stops the stage once the validation loss has not improved
    by a relative ``min_delta`` for ``patience`` steps.
    """

    epochs: int = 20
    steps: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    val_every: int = 1
    checkpoint_every: int = 1
    keep_best: bool = True
    patience: int = 0
    min_delta: float = 1e-4

    def __post_init__(self) -> None:
        require_positive_ints(self, "epochs", "batch_size", "val_every", "checkpoint_every")
        for name in ("steps", "patience"):
            value = getattr(self, name)
            if not is_integer(value) or value < 0:
                raise ValueError(f"{type(self).__name__}.{name} must be an integer >= 0, got {value!r}")
        require_reals(self, 0.0, math.inf, "lr", "grad_clip", open_low=True)
        require_reals(self, 0.0, math.inf, "weight_decay", "min_delta")
        require_reals(self, 0.0, 1.0, "warmup_fraction")

    def budget_epochs(self, steps_per_epoch: int) -> int:
        """Epochs of the budget for ``steps_per_epoch`` optimisation steps per epoch."""
        return max(1, math.ceil(self.steps / steps_per_epoch)) if self.steps else self.epochs


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
        require_reals(self, 0.0, math.inf, "smooth_l1_beta", "ema_power", open_low=True)
        require_reals(self, 0.0, 1.0, "ema_max_decay", open_high=True)


# The settings that follow from the data, each with what it must equal (the denoiser works on the
# autoencoder's latents, so its latent size is the autoencoder's): filled in by RunConfig.resolve.
DATA_SIZES = {
    "autoencoder.n_neurons": "the data's number of neurons",
    "denoiser.latent": "autoencoder.latent",
    "denoiser.cond_dim": "the data's number of condition columns",
    "denoiser.behavior_channels": "the data's number of behaviour channels",
}


@dataclass
class RunConfig:
    """Everything a training run needs, the settings of every stage nested in one object.

    The models' sizes that follow from the data (:data:`DATA_SIZES`) are filled in by :meth:`resolve`;
    until then the values a preset holds for them are placeholders. ``spike_history.enabled`` says whether
    training also fits the spike-history model (the train CLI's ``--spike-history``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_training: StageConfig = field(default_factory=lambda: StageConfig(grad_clip=2.0))
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    diffusion_training: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    spike_history: SpikeHistoryConfig = field(default_factory=SpikeHistoryConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")

    def data_sizes(self, data: SpikeData) -> dict[str, int]:
        """The value of each setting of :data:`DATA_SIZES` for ``data`` (and this config's autoencoder)."""
        return {
            "autoencoder.n_neurons": int(data.n_neurons),
            "denoiser.latent": self.autoencoder.latent,
            "denoiser.cond_dim": 0 if data.conditions is None else int(data.conditions.shape[1]),
            "denoiser.behavior_channels": 0 if data.behavior is None else int(data.behavior.shape[2]),
        }

    def resolve(self, data: SpikeData, chosen: Collection[str] = ()) -> RunConfig:
        """A new config with the sizes that follow from ``data`` filled in; this one is left unchanged.

        Sets ``autoencoder.n_neurons`` to the data's neurons, ``denoiser.latent`` to ``autoencoder.latent``,
        ``denoiser.cond_dim`` to the columns of the data's per-trial ``conditions`` and
        ``denoiser.behavior_channels`` to the channels of its ``behavior`` (0 for what the data lack). The
        values this config holds for them are placeholders (a preset's), replaced, unless named in
        ``chosen``, the dotted names of the settings a user set (a ``--config`` file's, ``--set``'s): a chosen
        value is checked instead. Resolving a resolved config with the same data changes nothing.

        Raises:
            ValueError: a chosen value that contradicts the data, naming the setting and both values.
        """
        updates: dict[str, dict[str, Any]] = {}
        for key, value in self.data_sizes(data).items():
            section, name = key.split(".")
            mine = getattr(getattr(self, section), name)
            if key in chosen and mine != value:
                raise ValueError(f"{key} is set to {mine!r}, but {DATA_SIZES[key]} is {value}; "
                                 f"drop the setting to take that value")
            updates.setdefault(section, {})[name] = value
        return merge(self, updates)


def preset(name: str) -> RunConfig:
    """A named configuration: ``"cpu"`` (default) or ``"paper"``."""
    if name == "cpu":
        # Measured on 2 cores (benchmarks/results/quality_vs_speed_lorenz_cpu.md): at this training budget the
        # paper's latent penalties (0.01 / 0.01) over-smooth the rates, and an epsilon-predicting denoiser
        # draws latents ~17% too narrow; weaker penalties and v-prediction fix both. Budgets are in steps, so
        # small data sets train as long as large ones (with early stopping), not 60 epochs of a few steps:
        # on sparse spiking-network data the autoencoder learns stimulus-locked structure only after ~300
        # steps at lr 3e-3 (docs/fidelity.md).
        return RunConfig(
            data=DataConfig(lorenz_preset="small"),
            autoencoder=AutoencoderConfig(hidden=128, n_blocks=4, ssm_mode="diag", l2_weight=0.001,
                                          smooth_weight=0.001),
            autoencoder_training=StageConfig(steps=700, batch_size=64, lr=3e-3, grad_clip=2.0, patience=200),
            denoiser=DenoiserConfig(hidden=64, n_blocks=4, ssm_mode="diag"),
            schedule=NoiseSchedule(prediction_type="v"),
            diffusion_training=DiffusionStageConfig(steps=3300, batch_size=64),
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

    Every value is checked against its field's annotation (:func:`field_values`); unknown keys and values
    of the wrong type raise a ValueError naming them (a typo must not be silently ignored).
    """
    return cls(**field_values(cls, data, where))


def field_values(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``cls``: nested dataclasses built, lists made tuples
    and integers made floats where the annotation asks; a ValueError naming ``where.key`` otherwise.

    A ``cls`` with a ``nested_defaults(data)`` classmethod (:class:`DataConfig`) gives the defaults of some
    nested sections: their keys in ``data`` apply on top of those defaults, not of the nested class's own."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    # nested sections whose defaults depend on another setting of the mapping (e.g. data.lorenz on its preset)
    defaults = cls.nested_defaults(data) if hasattr(cls, "nested_defaults") else {}
    return {
        name: _typed({**defaults[name], **value} if name in defaults and isinstance(value, dict) else value,
                     hints[name], f"{where}.{name}")
        for name, value in data.items()
    }


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (and converted: int -> float, list -> tuple)."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]  # the configs' unions are ``X | None``
        return _typed(value, hint, where)
    if hint is Any:
        return value
    if hint is float and is_number(value):
        return float(value)
    if hint in (int, bool, str) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if origin is dict and isinstance(value, dict):
        return value
    if origin is tuple and isinstance(value, (list, tuple)) and len(args) == len(value):
        return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise ValueError(f"{where} must be {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    """A type annotation in words, for error messages."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {len(args)} values"
    return "a mapping" if origin is dict else str(hint)


def update_nested(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested dict ``base`` with the keys of ``update`` set, recursing where both hold a dict."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = update_nested(base[key], value) if nested else value
    return out


def setting_names(settings: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted name of every setting (leaf) of the nested dict ``settings``, e.g. ``{"autoencoder.hidden"}``."""
    names: set[str] = set()
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            names |= setting_names(value, f"{prefix}{key}.")
        else:
            names.add(f"{prefix}{key}")
    return names


def merge(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``config`` with nested ``overrides`` applied (e.g. ``{"autoencoder": {"hidden": 64}}``).

    Overrides naming ``data.lorenz_preset`` start ``data.lorenz`` afresh from that preset (:class:`DataConfig`).
    """
    if not isinstance(overrides, dict):
        raise ValueError(f"config overrides must be a mapping, got {type(overrides).__name__}")
    base = to_dict(config)
    data = overrides.get("data")
    if isinstance(data, dict) and "lorenz_preset" in data:
        base["data"]["lorenz"] = {}
    return from_dict(RunConfig, update_nested(base, overrides))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading exponents without a decimal point (``1e-4``, YAML 1.2) as floats:
    YAML 1.1 made them strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML ``text`` as plain Python values, with YAML 1.2 numbers (``1e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain values only


def read_settings(path: str | Path) -> dict[str, Any]:
    """The nested settings of a YAML config file (possibly partial; may name a ``preset``)."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML file of (possibly partial) settings on top of ``base`` (default: the file's ``preset``,
    else the cpu preset; with ``base`` the file's ``preset`` is ignored)."""
    data = read_settings(path)
    name = data.pop("preset", None)
    return merge(base or preset(name or "cpu"), data)


class _Absent:
    """The value of a setting one of two configs lacks (shown as ``absent``)."""

    def __repr__(self) -> str:
        return "absent"


ABSENT = _Absent()


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted.key, old value, new value)`` for every setting of two nested config dicts that differs
    (:data:`ABSENT` for a key one side lacks)."""
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key, ABSENT), new.get(key, ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def describe_differences(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> str:
    """The settings that differ, one ``key: OLD in old_name, NEW in new_name`` per key, joined by ``; ``."""
    return "; ".join(f"{key}: {a!r} in {old_name}, {b!r} in {new_name}" for key, a, b in differences(old, new))
