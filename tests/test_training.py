"""Training pipeline: configs, checkpoints, exact resume, the CLIs end to end, compiled vs eager."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ldns_fast.config import RunConfig, from_dict, load_config, merge, preset, to_dict
from ldns_fast.data import read_dataset
from ldns_fast.evaluate import main as evaluate_main
from ldns_fast.models import Autoencoder, AutoencoderConfig, Denoiser, autoencoder_loss
from ldns_fast.pipeline import LDNS
from ldns_fast.sample import main as sample_main
from ldns_fast.train import build_config
from ldns_fast.train import main as train_main
from ldns_fast.train import parser as train_parser
from ldns_fast.training.loop import DistributedContext, StageTrainer

TINY_FLAGS = [
    "--set", "data.lorenz.n_trials=60", "--set", "data.lorenz.n_bins=24", "--set", "data.lorenz.n_neurons=12",
    "--set", "autoencoder.hidden=16", "--set", "autoencoder.d_state=8", "--set", "autoencoder.latent=4",
    "--set", "denoiser.hidden=16", "--set", "denoiser.d_state=8",
    "--set", "autoencoder_training.batch_size=16", "--set", "diffusion_training.batch_size=16",
    "--ae-epochs", "2", "--diffusion-epochs", "2", "--no-progress",
]


@pytest.fixture(autouse=True)
def lorenz_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LDNS_FAST_CACHE", str(tmp_path_factory.getbasetemp() / "lorenz-cache"))


# ---------------------------------------------------------------- configs


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


# ---------------------------------------------------------------- checkpoints


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


# ---------------------------------------------------------------- exact resume


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


# ---------------------------------------------------------------- CLIs end to end


def test_train_then_sample_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_main(["--out", str(out), *TINY_FLAGS]) == 0
    for name in ("autoencoder.pt", "diffusion.pt", "config.yaml", "metrics.csv", "autoencoder_report.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.glob("*.yaml")] == ["config.yaml"]  # the run's settings, no per-stage copies
    assert not list(out.glob(".*"))  # no lock or temporary file left
    with pytest.raises(SystemExit, match="already holds autoencoder.pt, diffusion.pt"):
        train_main(["--out", str(out), *TINY_FLAGS])
    assert train_main(["--out", str(out), "--resume", *TINY_FLAGS]) == 0  # finished: reloads, no error

    with pytest.raises(SystemExit, match="no spike-history model"):
        sample_main([str(out), "--n", "2", "--steps", "2", "--spike-history", "--no-progress"])
    assert sample_main([str(out), "--lengths", "7", "24", "30", "--steps", "4", "--no-progress",
                        "--out", str(tmp_path / "s.h5")]) == 0
    samples = read_dataset(tmp_path / "s.h5")
    assert samples.spikes.shape == (3, 30, 12) and samples.latents.shape == (3, 30, 4)
    assert samples.lengths.tolist() == [7, 24, 30]
    assert not samples.spikes[0, 7:].any() and not samples.rates[1, 24:].any()
    assert np.all(samples.rates[2] > 0)

    assert evaluate_main(["--checkpoint", str(out), "--steps", "2", "--spacing", "linspace", "--bootstrap", "2",
                          "--no-plots", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["generated"]["n_trials"] == report["real"]["n_trials"] > 0
    assert report["metrics"]["kl_population_count"]["mean"] >= 0
    assert "linspace spacing" in report["generated"]["description"]

    model = LDNS.load(out)
    assert sample_main([str(out), "--n", "2", "--steps", "4", "--spacing", "trailing", "--seed", "3", "--no-progress",
                        "--out", str(tmp_path / "t.h5")]) == 0
    trailing = model.sample(2, steps=4, seed=3, spacing="trailing")
    np.testing.assert_allclose(read_dataset(tmp_path / "t.h5").latents,
                               trailing.to_spike_data(model.bin_width).latents, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(model.sample(2, steps=4, seed=3).latents, trailing.latents)  # default: logsnr
    a = model.sample(4, length=10, steps=3, seed=11)
    b = model.sample(4, length=10, steps=3, seed=11)
    c = model.sample(4, length=10, steps=3, seed=12)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    with pytest.raises(ValueError, match="n must be a positive number"):
        model.sample(0)
    with pytest.raises(ValueError, match=r"lengths must hold n=2"):
        model.sample(2, lengths=[5, 0])
    counts = torch.poisson(torch.full((2, 12, 9), 0.5))
    assert model.encode(counts).shape == (2, 4, 9)
    with pytest.raises(ValueError, match=r"spikes must have shape \[B, N=12, T\]"):
        model.encode(counts[:, :5])
    with pytest.raises(ValueError, match="non-negative integer counts"):
        model.encode(counts - 1)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        model.encode(counts + 0.5)
    with pytest.raises(ValueError, match="NaN"):
        model.encode(counts * float("nan"))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        model.encode(counts, torch.ones(2, 8))

    global_state = torch.get_rng_state()
    model.sample(2, length=5, steps=2)  # unseeded: fresh randomness, global generator untouched
    assert torch.equal(global_state, torch.get_rng_state())

    # autoencoder reconstruction of variable-length trials: batched equals one trial at a time
    recon = model.reconstruct(samples, seed=3, batch_size=2)
    assert recon.rates.shape == (3, 12, 30) and recon.latents.shape == (3, 4, 30)
    assert recon.lengths.tolist() == [7, 24, 30]
    for i, length in enumerate([7, 24, 30]):
        alone = model.reconstruct(samples.subset(np.array([i])), seed=3)
        assert torch.allclose(alone.rates[0, :, :length], recon.rates[i, :, :length], rtol=1e-4, atol=1e-6)
        assert not recon.rates[i, :, length:].any() and not recon.spikes[i, :, length:].any()
    assert torch.equal(recon.spikes, model.reconstruct(samples, seed=3).spikes)
    assert torch.equal(recon.spikes, recon.spikes.round()) and bool((recon.spikes >= 0).all())
    with pytest.raises(ValueError, match="the data have 5 neurons, the autoencoder expects 12"):
        model.reconstruct(dataclasses.replace(samples, spikes=samples.spikes[:, :, :5]))
    assert evaluate_main(["--checkpoint", str(out), "--reconstruction", "--bootstrap", "0", "--no-plots",
                          "--out", str(tmp_path / "recon")]) == 0
    report = json.loads((tmp_path / "recon" / "metrics.json").read_text())
    assert report["generated"]["n_trials"] == report["real"]["n_trials"] > 0
    assert "reconstruction" in report["generated"]["description"]
    with pytest.raises(SystemExit):
        evaluate_main(["--generated", str(tmp_path / "s.h5"), "--real", str(tmp_path / "s.h5"), "--reconstruction"])


def test_sample_cli_reports_a_missing_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="diffusion.pt does not exist"):
        sample_main([str(tmp_path), "--n", "2"])


def test_sample_cli_rejects_eta_for_fixed_noise_samplers(tmp_path: Path, capsys) -> None:
    for name in ("ddpm", "sde-dpm++"):
        with pytest.raises(SystemExit):
            sample_main([str(tmp_path), "--sampler", name, "--eta", "0.5"])
        assert "--eta applies to ddim and dpm++" in capsys.readouterr().err


def test_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown keys"):
        train_main(["--out", str(tmp_path), "--set", "autoencoder.nope=1"])
    with pytest.raises(SystemExit, match="section.key=value"):
        train_main(["--out", str(tmp_path), "--set", "autoencoder.hidden"])


# ---------------------------------------------------------------- compiled training path


@pytest.mark.slow
def test_compiled_training_step_matches_eager() -> None:
    config = AutoencoderConfig(n_neurons=6, hidden=8, latent=4, n_blocks=1, d_state=4, ssm_mode="diag", backend="torch")
    torch.manual_seed(0)
    model = Autoencoder(config)
    spikes = torch.poisson(torch.rand(4, 6, 16))
    mask = torch.ones(4, 16)
    eager = autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(3))
    compiled_model = torch.compile(model)
    compiled = autoencoder_loss(compiled_model, config, spikes, mask, torch.Generator().manual_seed(3))
    torch.testing.assert_close(compiled["loss"], eager["loss"], rtol=1e-5, atol=1e-6)
    g_eager = torch.autograd.grad(eager["loss"], list(model.parameters()))
    g_compiled = torch.autograd.grad(compiled["loss"], list(model.parameters()))
    for a, b in zip(g_eager, g_compiled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def tiny_model(seed: int = 0) -> LDNS:
    """An LDNS with random weights (no training): 1 denoiser block of 16 channels, latent 4."""
    torch.manual_seed(seed)
    config = merge(preset("cpu"), {
        "autoencoder": {"n_neurons": 12, "hidden": 16, "latent": 4, "n_blocks": 1, "d_state": 8},
        "denoiser": {"latent": 4, "hidden": 16, "n_blocks": 1, "d_state": 8, "time_features": 32},
    })
    autoencoder, denoiser = Autoencoder(config.autoencoder), Denoiser(config.denoiser)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return LDNS(config, autoencoder, denoiser, torch.randn(4), torch.rand(4) + 0.5, bin_width=0.01, n_bins=24)


def test_sampling_reports_non_finite_latents() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.denoiser.out.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite latents"):
        model.sample(2, length=6, steps=2, seed=0)


@pytest.mark.slow
def test_compiled_sampling_matches_eager_on_valid_bins_with_one_bucketed_shape(monkeypatch) -> None:
    """Trials of lengths 30, 5 | 18 in batches of 2 all reach the compiled denoiser as [2, 4, 64]."""
    from torch._dynamo.utils import counters

    model = tiny_model()
    compiled, shapes = model._compiled(), []

    def recording(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return compiled(x, *args, **kwargs)

    monkeypatch.setattr(model, "_compiled", lambda: recording)
    lengths = [30, 5, 18]
    fast = model.sample(3, lengths=lengths, steps=3, seed=1, batch_size=2, compile=True)
    eager = model.sample(3, lengths=lengths, steps=3, seed=1, batch_size=2)
    assert set(shapes) == {(2, 4, 64)} and len(shapes) == 6
    # Float32 rounding only (FFT sizes differ with the padded length; the compiler reorders reductions).
    torch.testing.assert_close(fast.latents, eager.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.rates, eager.rates, rtol=1e-4, atol=1e-4)
    assert fast.latents.std() > 0.1
    for i, n in enumerate(lengths):
        assert not fast.latents[i, :, n:].any() and not fast.rates[i, :, n:].any()
    graphs = counters["stats"]["unique_graphs"]
    model.sample(3, lengths=[64, 1, 40], steps=2, seed=2, batch_size=2, compile=True)
    assert counters["stats"]["unique_graphs"] == graphs  # other lengths, same bucket: nothing recompiled


def test_torchrun_ddp_on_cpu_trains_and_writes_loadable_checkpoints(tmp_path: Path) -> None:
    """Two gloo ranks through torchrun: rank 0 writes checkpoints that load and sample."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ldns_fast.train", "--out", str(out), "--device", "cpu", *TINY_FLAGS]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = LDNS.load(out).sample(2, length=8, steps=2, seed=0)
    assert samples.spikes.shape == (2, 12, 8)


def test_spike_history_is_fitted_saved_and_used_for_sampling(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_main(["--out", str(out), "--spike-history", *TINY_FLAGS]) == 0
    model = LDNS.load(out)
    assert model.spike_history is not None
    a = model.sample(3, length=20, steps=2, seed=4, spike_history=True)
    b = model.sample(3, length=20, steps=2, seed=4, spike_history=True)
    assert torch.equal(a.spikes, b.spikes)
    assert int(a.spikes.max()) <= model.spike_history.clip
    assert sample_main([str(out), "--n", "2", "--steps", "2", "--spike-history", "--no-progress",
                        "--out", str(tmp_path / "h.h5")]) == 0
    assert read_dataset(tmp_path / "h.h5").spikes.shape == (2, 24, 12)


def test_variable_length_training_and_sampling_from_quarter_to_four_times_the_median(tmp_path: Path) -> None:
    out = tmp_path / "var"
    assert train_main(["--out", str(out), *TINY_FLAGS, "--set", "data.lorenz.min_bins=6"]) == 0
    model = LDNS.load(out)
    median = 16
    lengths = [median // 4, median // 2, median, 2 * median, 4 * median]
    samples = model.sample(len(lengths), lengths=lengths, steps=3, seed=0, sampler="dpm++")
    assert samples.latents.shape == (5, 4, 4 * median) and samples.lengths.tolist() == lengths
    for i, length in enumerate(lengths):
        assert not samples.spikes[i, :, length:].any() and not samples.latents[i, :, length:].any()
        assert bool((samples.rates[i, :, :length] > 0).all())


def test_conditional_training_and_classifier_free_guidance(tmp_path: Path) -> None:
    from ldns_fast.data import write_dataset

    rng = np.random.default_rng(0)
    n, T, N = 40, 16, 8
    path = write_dataset(tmp_path / "d.h5", rng.poisson(0.3, (n, T, N)), bin_width=0.01,
                         conditions=rng.normal(size=(n, 2)), behavior=rng.normal(size=(n, T, 3)))
    out = tmp_path / "run"
    assert train_main(["--out", str(out), "--data", str(path), *TINY_FLAGS, "--set", "denoiser.cond_drop=0.2"]) == 0
    model = LDNS.load(out)
    assert (model.config.denoiser.cond_dim, model.config.denoiser.behavior_channels) == (2, 3)
    cond, behavior = torch.randn(3, 2), torch.randn(3, 3, T)
    kwargs = dict(length=T, steps=3, seed=1, sampler="ddim")
    unconditional = model.sample(3, **kwargs)
    scale0 = model.sample(3, conditions=cond, behavior=behavior, guidance_scale=0.0, **kwargs)
    scale1 = model.sample(3, conditions=cond, behavior=behavior, guidance_scale=1.0, **kwargs)
    scale3 = model.sample(3, conditions=cond, behavior=behavior, guidance_scale=3.0, **kwargs)
    assert torch.equal(scale0.latents, unconditional.latents)  # CFG scale 0 is the unconditional model
    assert not torch.allclose(scale1.latents, unconditional.latents)
    assert not torch.allclose(scale3.latents, scale1.latents)
    with pytest.raises(ValueError, match=r"conditions must have shape \[n, cond_dim\] = \[3, 2\]"):
        model.sample(3, conditions=torch.randn(3, 5), **kwargs)
    with pytest.raises(ValueError, match=r"behavior must have shape"):
        model.sample(3, behavior=torch.randn(3, 3, T - 1), **kwargs)
    assert evaluate_main(["--checkpoint", str(out), "--real", str(path), "--split", "all", "--steps", "2",
                          "--bootstrap", "2", "--no-plots"]) == 0
    assert sample_main([str(out), "--like", str(path), "--split", "all", "--steps", "2", "--guidance-scale", "2",
                        "--no-progress", "--out", str(tmp_path / "c.h5")]) == 0
    assert read_dataset(tmp_path / "c.h5").n_trials == n
