"""The train CLI (:mod:`ldns_fast.train`) end to end on tiny runs, with the sample and evaluate CLIs and
:class:`ldns_fast.pipeline.LDNS` on what it wrote: fixed and variable lengths, spike history, conditions
with classifier-free guidance, and a clear error for a bad override."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS

from ldns_fast.checkpoint import load_checkpoint
from ldns_fast.config import RunConfig, load_config
from ldns_fast.data import LorenzConfig, read_dataset
from ldns_fast.evaluate import main as evaluate_main
from ldns_fast.pipeline import LDNS
from ldns_fast.sample import main as sample_main
from ldns_fast.train import main as train_main

pytestmark = pytest.mark.usefixtures("lorenz_cache")


def test_train_then_sample_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_main(["--out", str(out), *TINY_FLAGS]) == 0
    for name in ("autoencoder.pt", "diffusion.pt", "config.yaml", "metrics.csv", "autoencoder_report.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.glob("*.yaml")] == ["config.yaml"]  # the run's settings, no per-stage copies
    assert not list(out.glob(".*"))  # no lock or temporary file left
    saved = load_config(out / "config.yaml", RunConfig())  # the resolved config: sizes of the data, not the preset's
    assert saved.data.lorenz == LorenzConfig.small(n_trials=60, n_bins=24, n_neurons=12)
    sizes = (saved.autoencoder.n_neurons, saved.denoiser.latent, saved.denoiser.cond_dim,
             saved.denoiser.behavior_channels)
    assert sizes == (12, 4, 0, 0)
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


def test_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown keys"):
        train_main(["--out", str(tmp_path), "--set", "autoencoder.nope=1"])
    with pytest.raises(SystemExit, match="section.key=value"):
        train_main(["--out", str(tmp_path), "--set", "autoencoder.hidden"])


def test_a_size_set_against_the_data_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="autoencoder.n_neurons is set to 10, but the data's number of neurons is 12"):
        train_main(["--out", str(out), *TINY_FLAGS, "--set", "autoencoder.n_neurons=10"])
    with pytest.raises(SystemExit, match="denoiser.latent is set to 8, but autoencoder.latent is 4"):
        train_main(["--out", str(out), *TINY_FLAGS, "--set", "denoiser.latent=8"])
    assert not out.exists()


def test_spike_history_is_fitted_saved_and_used_for_sampling(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = ["--set", "spike_history.history=7", "--set", "spike_history.coupling_rank=2",
                "--set", "spike_history.max_iter=30"]
    assert train_main(["--out", str(out), "--spike-history", *settings, *TINY_FLAGS]) == 0
    saved = load_config(out / "config.yaml", RunConfig()).spike_history
    assert (saved.enabled, saved.history, saved.coupling_rank, saved.max_iter) == (True, 7, 2, 30)
    record = load_checkpoint(out / "spike_history.pt", "spike_history", ("model", "losses"))
    assert (record["config"]["history"], record["config"]["coupling_rank"]) == (7, 2)
    assert record["model"]["h"].shape == (12, 7) and record["model"]["coupling_u"].shape == (12, 2)
    assert len(record["losses"]) <= 30 + 1
    model = LDNS.load(out)
    assert model.spike_history is not None
    assert (model.spike_history.history, model.spike_history.coupling_rank) == (7, 2)
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
    saved = load_config(out / "config.yaml", RunConfig())  # sizes of these data, none of them the preset's
    sizes = (saved.autoencoder.n_neurons, saved.denoiser.latent, saved.denoiser.cond_dim,
             saved.denoiser.behavior_channels)
    assert sizes == (8, 4, 2, 3)
    model = LDNS.load(out)
    assert (model.config.denoiser.cond_dim, model.config.denoiser.behavior_channels) == (2, 3)
    assert (model.config.autoencoder, model.config.denoiser) == (saved.autoencoder, saved.denoiser)
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
