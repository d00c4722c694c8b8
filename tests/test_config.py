"""Run configs (:mod:`ldns_fast.config`): YAML round trips, partial files on a preset, number parsing in
files and ``--set`` overrides, an error naming the key for every bad setting, the typed Lorenz and
spike-history sections, and the data-derived sizes that ``RunConfig.resolve`` fills in."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ldns_fast.checkpoint import save_yaml
from ldns_fast.config import DATA_SIZES, RunConfig, from_dict, load_config, merge, preset, to_dict
from ldns_fast.data import LorenzConfig, SpikeData, read_dataset, write_dataset
from ldns_fast.spike_history import SpikeHistoryConfig
from ldns_fast.train import build_config, chosen_settings, settings_layers
from ldns_fast.train import parser as train_parser


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = merge(preset("paper"), {"autoencoder": {"hidden": 64}, "seed": 3})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(path) == config
    assert from_dict(RunConfig, to_dict(config)) == config


def test_partial_yaml_applies_on_the_preset_and_unknown_keys_fail(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: paper\ndenoiser:\n  n_blocks: 2\n")
    config = load_config(path)
    assert config.denoiser.n_blocks == 2 and config.autoencoder == preset("paper").autoencoder
    path.write_text("autoencoder:\n  hiden: 3\n")
    with pytest.raises(ValueError, match=r"config.autoencoder has unknown keys \['hiden'\]"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpu-huge")


def test_exponents_without_a_decimal_point_are_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("autoencoder_training:\n  lr: 3e-4\n  weight_decay: 1E-2\ndiffusion_training:\n  lr: 2.5e-4\n")
    config = load_config(path)
    assert (config.autoencoder_training.lr, config.autoencoder_training.weight_decay) == (3e-4, 1e-2)
    assert config.diffusion_training.lr == 2.5e-4
    args = train_parser().parse_args(["--set", "autoencoder_training.lr=1e-4", "--set", "autoencoder.hidden=64",
                                      "--set", "diffusion_training.min_delta=0"])
    config = build_config(args)
    assert config.autoencoder_training.lr == 1e-4 and type(config.autoencoder_training.lr) is float
    assert config.autoencoder.hidden == 64 and type(config.diffusion_training.min_delta) is float  # 0 -> 0.0


@pytest.mark.parametrize("overrides, message", [
    ({"autoencoder_training": {"lr": "fast"}}, "config.autoencoder_training.lr must be a number, got 'fast'"),
    ({"autoencoder": {"hidden": 2.5}}, "config.autoencoder.hidden must be an integer, got 2.5"),
    ({"autoencoder": {"hidden": True}}, "config.autoencoder.hidden must be an integer, got True"),
    ({"autoencoder": {"bidirectional": "no"}}, "config.autoencoder.bidirectional must be true or false, got 'no'"),
    ({"schedule": {"kind": 3}}, "config.schedule.kind must be a string, got 3"),
    ({"autoencoder_training": "fast"}, "config.autoencoder_training must be a mapping, got str"),
    ({"seed": "abc"}, "config.seed must be an integer, got 'abc'"),
    ({"seed": -1}, "seed must be an integer in [0, 2**64), got -1"),
    ({"seed": 2**70}, "seed must be an integer in [0, 2**64)"),
    ({"autoencoder_training": {"grad_clip": -1.0}}, "StageConfig.grad_clip must be a finite number in (0, inf)"),
    ({"diffusion_training": {"lr": float("inf")}}, "DiffusionStageConfig.lr must be a finite number in (0, inf)"),
    ({"autoencoder_training": {"lr": float("nan")}}, "StageConfig.lr must be a finite number"),
    ({"autoencoder_training": {"weight_decay": -0.1}}, "StageConfig.weight_decay must be a finite number in [0, inf)"),
    ({"autoencoder_training": {"warmup_fraction": 1.5}}, 
     "StageConfig.warmup_fraction must be a finite number in [0, 1]"),
    ({"autoencoder_training": {"batch_size": 0}}, "StageConfig.batch_size must be a positive integer, got 0"),
    ({"diffusion_training": {"ema_max_decay": 1}},
     "DiffusionStageConfig.ema_max_decay must be a finite number in [0, 1)"),
    ({"data": {"lorenz": {"bin_width": 1e300}}},
     "LorenzConfig.bin_width must be one number of seconds in [1e-06, 3600], got 1e+300"),
    ({"data": {"lorenz": {"bin_width": "0.01"}}}, "data.lorenz.bin_width must be a number, got '0.01'"),
    ({"data": {"lorenz": {"n_trails": 5}}}, "data.lorenz has unknown keys ['n_trails']"),
    ({"data": {"lorenz": {"splits": [0.5, 0.5]}}}, "data.lorenz.splits must be a list of 3 values, got [0.5, 0.5]"),
])
def test_every_setting_is_checked_with_an_error_naming_its_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        merge(preset("cpu"), overrides)


# ------------------------------------------------------------------------------ typed sections


def test_lorenz_settings_are_a_typed_config_on_their_preset(tmp_path: Path) -> None:
    assert preset("cpu").data.lorenz == LorenzConfig.small() and preset("paper").data.lorenz == LorenzConfig.paper()
    args = train_parser().parse_args(["--set", "data.lorenz.n_trials=60",
                                      "--set", "data.lorenz.splits=[0.5, 0.25, 0.25]"])
    lorenz = build_config(args).data.lorenz
    assert lorenz == LorenzConfig.small(n_trials=60, splits=(0.5, 0.25, 0.25))  # the rest from the small preset
    # naming a preset starts the Lorenz settings afresh from it (the file's n_trials is gone), with the keys of
    # the same overrides on top
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  lorenz:\n    n_trials: 60\n    n_bins: 24\n")
    args = train_parser().parse_args(["--config", str(path), "--set", "data.lorenz_preset=paper",
                                      "--set", "data.lorenz.seed=3"])
    assert build_config(args).data.lorenz == LorenzConfig.paper(seed=3)
    args = train_parser().parse_args(["--config", str(path), "--set", "data.lorenz.seed=3"])
    assert build_config(args).data.lorenz == LorenzConfig.small(n_trials=60, n_bins=24, seed=3)
    # a mapping (a settings file, a config.yaml written before the section was typed) applies on its preset
    partial = {"data": {"source": "lorenz", "lorenz_preset": "small", "lorenz": {"n_trials": 60, "n_bins": 24}}}
    assert from_dict(RunConfig, partial).data.lorenz == LorenzConfig.small(n_trials=60, n_bins=24)
    with pytest.raises(ValueError, match=re.escape("data.lorenz_preset: unknown Lorenz preset 'huge'")):
        merge(preset("cpu"), {"data": {"lorenz_preset": "huge"}})


def test_spike_history_settings_and_switch_come_from_flags_and_overrides() -> None:
    assert preset("cpu").spike_history == SpikeHistoryConfig() and not preset("cpu").spike_history.enabled
    config = build_config(train_parser().parse_args(["--spike-history", "--set", "spike_history.history=7",
                                                     "--set", "spike_history.coupling_rank=2"]))
    assert config.spike_history == SpikeHistoryConfig(history=7, coupling_rank=2, enabled=True)
    config = build_config(train_parser().parse_args(["--set", "spike_history.enabled=true"]))
    assert config.spike_history.enabled
    with pytest.raises(ValueError, match=re.escape("config.spike_history.enabled must be true or false, got 'yes!'")):
        build_config(train_parser().parse_args(["--set", "spike_history.enabled=yes!"]))


# ------------------------------------------------------------------------------ data-derived sizes


@pytest.fixture
def conditional_data(tmp_path: Path) -> SpikeData:
    """7 neurons, 2 condition columns and 3 behaviour channels: none of them a preset's size."""
    rng = np.random.default_rng(0)
    n, T, N = 10, 8, 7
    path = write_dataset(tmp_path / "d.h5", rng.poisson(0.3, (n, T, N)), bin_width=0.01,
                         conditions=rng.normal(size=(n, 2)), behavior=rng.normal(size=(n, T, 3)))
    return read_dataset(path)


def test_resolve_fills_every_data_derived_size_in_a_new_config(conditional_data: SpikeData) -> None:
    config = merge(preset("cpu"), {"autoencoder": {"latent": 4, "hidden": 64}})
    before = to_dict(config)
    resolved = config.resolve(conditional_data)
    sizes = (resolved.autoencoder.n_neurons, resolved.denoiser.latent, resolved.denoiser.cond_dim,
             resolved.denoiser.behavior_channels)
    assert sizes == (7, 4, 2, 3)
    assert to_dict(config) == before  # a new config: the placeholders of this one are left as they were
    assert (config.autoencoder.n_neurons, config.denoiser.latent) == (128, 8)
    # everything else is the config's own
    assert resolved.autoencoder.hidden == 64 and resolved.denoiser.hidden == config.denoiser.hidden
    assert resolved.resolve(conditional_data, set(DATA_SIZES)) == resolved  # resolved: nothing left to change
    unconditional = dataclasses.replace(conditional_data, conditions=None, behavior=None)
    resolved = resolved.resolve(unconditional)  # the data decide: no conditions, no behaviour
    assert (resolved.denoiser.cond_dim, resolved.denoiser.behavior_channels) == (0, 0)


@pytest.mark.parametrize("key, value, message", [
    ("autoencoder.n_neurons", 10, "autoencoder.n_neurons is set to 10, but the data's number of neurons is 7"),
    ("denoiser.latent", 8, "denoiser.latent is set to 8, but autoencoder.latent is 4"),
    ("denoiser.cond_dim", 0, "denoiser.cond_dim is set to 0, but the data's number of condition columns is 2"),
    ("denoiser.behavior_channels", 5,
     "denoiser.behavior_channels is set to 5, but the data's number of behaviour channels is 3"),
])
def test_resolve_refuses_a_chosen_size_that_contradicts_the_data(
    conditional_data: SpikeData, key: str, value: int, message: str
) -> None:
    section, name = key.split(".")
    config = merge(preset("cpu"), {"autoencoder": {"latent": 4}, section: {name: value}})
    with pytest.raises(ValueError, match=re.escape(message)):
        config.resolve(conditional_data, {key})
    assert getattr(getattr(config.resolve(conditional_data), section), name) != value  # not chosen: replaced


def test_chosen_settings_are_those_the_command_line_sets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: paper\nautoencoder:\n  n_neurons: 10\n")
    args = train_parser().parse_args(["--config", str(path), "--seed", "2", "--spike-history",
                                      "--set", "denoiser.cond_dim=2", "--set", "data.lorenz.n_trials=60"])
    assert chosen_settings(settings_layers(args)) == {"autoencoder.n_neurons", "seed", "spike_history.enabled", "denoiser.cond_dim",
                                     "data.lorenz.n_trials"}


def test_resolved_config_round_trips_through_yaml_and_json(tmp_path: Path, conditional_data: SpikeData) -> None:
    config = merge(preset("cpu"), {"autoencoder": {"latent": 4}, "data": {"lorenz": {"n_trials": 60}},
                                   "spike_history": {"history": 7, "enabled": True}}).resolve(conditional_data)
    path = save_yaml(tmp_path / "config.yaml", to_dict(config))
    saved = yaml.safe_load(path.read_text())
    assert saved["autoencoder"]["n_neurons"] == 7 and saved["denoiser"]["latent"] == 4
    assert (saved["denoiser"]["cond_dim"], saved["denoiser"]["behavior_channels"]) == (2, 3)
    assert saved["data"]["lorenz"]["n_trials"] == 60 and saved["spike_history"]["history"] == 7
    assert load_config(path, RunConfig()) == config
    assert load_config(path, preset("paper")) == config  # a complete file: no setting left to the base
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config
