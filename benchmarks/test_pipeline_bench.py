"""Pipeline speed: sampling steps (DDPM-1000 vs DDIM / DPM-Solver++) and training steps (eager vs compiled).

Ratios go in ``extra_info`` against a baseline measured in the same run: ``speedup_vs_ddpm1000`` for
samplers, ``speedup_vs_eager`` for the training step (each round paired with an eager step). Models use the
default (``cpu`` preset) Lorenz sizes with random weights: the cost of a step does not depend on the weights.
"""
from __future__ import annotations

import pytest
import torch
from benchmarks.common import DEVICE, median_seconds, run_benchmark, run_paired_benchmark
from benchmarks.memory import timing_allocator

from ldns_fast.config import preset
from ldns_fast.diffusion import DiffusionSchedule, make_sampler, sample
from ldns_fast.kernels.ops import COMPILE_OPTIONS
from ldns_fast.models import Autoencoder, Denoiser, autoencoder_loss

RUN = preset("cpu")
BATCH, LENGTH = 64, 128


def denoiser() -> Denoiser:
    torch.manual_seed(0)
    model = Denoiser(RUN.denoiser).to(DEVICE).eval()
    with torch.no_grad():  # leave the adaLN-Zero identity so every block does real work
        for block in model.blocks:
            block.modulation.weight.normal_(0, 0.02)
    return model


def sampling_call(model: Denoiser, name: str, steps: int):
    schedule = DiffusionSchedule(RUN.schedule)
    sampler = make_sampler(name, schedule)
    shape = (BATCH, RUN.denoiser.latent, LENGTH)

    def call() -> None:
        sample(model, shape, sampler, steps, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)

    return call


@pytest.fixture(scope="module")
def ddpm_seconds() -> float:
    """Median time of the reference DDPM-1000 sampler in this run."""
    return median_seconds(sampling_call(denoiser(), "ddpm", 1000), rounds=1)


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_sampling(benchmark, ddpm_seconds, name, steps):
    benchmark.group = f"sampling B={BATCH} L={LENGTH}"
    median = run_benchmark(benchmark, sampling_call(denoiser(), name, steps), rounds=3)
    benchmark.extra_info.update(
        device=str(DEVICE), sampler=name, steps=steps, ddpm1000_seconds=ddpm_seconds,
        speedup_vs_ddpm1000=ddpm_seconds / median, samples_per_second=BATCH / median,
    )


def training_step(compiled: bool):
    config = RUN.autoencoder
    torch.manual_seed(0)
    model = Autoencoder(config).to(DEVICE)
    runner = torch.compile(model, options=COMPILE_OPTIONS) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spikes = torch.poisson(torch.full((BATCH, config.n_neurons, LENGTH), 0.2, device=DEVICE))
    mask = torch.ones(BATCH, LENGTH, device=DEVICE)

    def call() -> None:
        loss = autoencoder_loss(runner, config, spikes, mask, torch.Generator(DEVICE).manual_seed(0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return call


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_autoencoder_training_step(benchmark, mode):
    """A training step (loss, backward, AdamW) of the ``cpu`` preset's autoencoder, eager or compiled with the
    trainer's inductor options, each round paired with an eager step of its own model (the baseline)."""
    benchmark.group = f"autoencoder training step B={BATCH} L={LENGTH}"
    call, eager = training_step(compiled=mode == "compiled"), training_step(compiled=False)
    call()  # compile outside the timed rounds
    with timing_allocator():
        median, eager_seconds = run_paired_benchmark(benchmark, call, eager, rounds=7)
    benchmark.extra_info.update(
        device=str(DEVICE), mode=mode, eager_seconds=eager_seconds,
        speedup_vs_eager=eager_seconds / median, trials_per_second=BATCH / median,
    )
