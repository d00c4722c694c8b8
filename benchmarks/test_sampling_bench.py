"""Sampling fast path: DDIM-20, one denoiser step and one training step of the paper's Lorenz denoiser.

Model: the ``paper`` preset's denoiser (DPLR S4, 4 blocks x 64 channels, state 64) with random weights
and nonzero adaLN modulation (so every block does real work; the cost does not depend on the weights);
batch 64, length = the paper Lorenz trial length (256 bins). Variants, all measured in this run:

- ``unfused``: the block's pre-fusion formula (separate norm, modulation, mask, GELU and gate ops) with
  every S4 kernel recomputed at each call: the reference's eager path.
- ``recompute``: the model as it is, but every S4 kernel and its spectrum recomputed at each denoiser
  call, no compilation. Done by clearing each layer's kernel cache before the call
  (a dict clear), so the forward does all the kernel work, as the reference does at every step.
- ``cached``: what ``LDNS.sample`` runs: kernel spectra cached.
- ``compiled``: what ``LDNS.sample(compile=True)`` runs: ``cached`` with the denoiser under
  ``torch.compile`` (default mode on CPU, CUDA graphs on CUDA) and the spectra passed in.

DDIM-20 compares ``recompute`` (baseline), ``cached`` and ``compiled``; the denoiser
step ``unfused`` (baseline), ``recompute``, ``cached`` and ``compiled``. The training step (MSE denoising
loss, backward, AdamW; kernels computed in the graph, as training never caches) compares ``unfused``
(baseline), ``fused`` (the block as it is) and ``compiled`` (``torch.compile`` of the model).

``extra_info``: ``speedup_vs_recompute`` (DDIM-20: ``cached`` and ``compiled`` against kernels recomputed at
every call), ``speedup_vs_unfused`` (step and training), the baseline's seconds, and trials per second. Each
variant's baseline runs before every one of its rounds (:func:`benchmarks.common.run_paired_benchmark`), so a
ratio compares the same stretch of time on a shared machine. The compiled variants compile in their warm-up
round, outside the timing. No peak-memory figures here: the module times with glibc's usual heap behaviour
(:func:`benchmarks.memory.timing_allocator`), not the mmap-per-tensor mode that the memory figures need.
Run: ``pytest benchmarks/test_sampling_bench.py --benchmark-only``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from benchmarks.common import DEVICE, run_benchmark, run_paired_benchmark
from benchmarks.memory import timing_allocator

from ldns_fast.config import preset
from ldns_fast.data import LorenzConfig
from ldns_fast.diffusion import DiffusionSchedule, make_sampler, sample
from ldns_fast.models import Denoiser
from ldns_fast.models.denoiser import DenoiserBlock
from ldns_fast.models.layers import apply_mask
from ldns_fast.pipeline import compile_denoiser
from ldns_fast.ssm import S4
from ldns_fast.training.stages import diffusion_loss

RUN = preset("paper")
BATCH, LENGTH, STEPS = 64, LorenzConfig.preset(RUN.data.lorenz_preset).n_bins, 20
CPU = DEVICE.type == "cpu"
SAMPLE_ROUNDS, STEP_ROUNDS, TRAIN_ROUNDS = (5, 10, 5) if CPU else (10, 50, 20)


@pytest.fixture(autouse=True, scope="module")
def normal_allocator() -> Iterator[None]:
    with timing_allocator():
        yield


def denoiser() -> Denoiser:
    torch.manual_seed(0)
    model = Denoiser(RUN.denoiser).to(DEVICE).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.weight.normal_(0, 0.02)
            block.modulation.bias.normal_(0, 0.02)
    return model


def unfused_forward(
    self: DenoiserBlock, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None = None,
    spectrum: torch.Tensor | None = None,
) -> torch.Tensor:
    """The block as written before the fused ops: every elementwise and norm step a separate torch op."""

    def norm(v: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(v.transpose(1, 2), (v.shape[1],)).transpose(1, 2)

    shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.gelu(emb))[..., None].chunk(6, dim=1)
    h = norm(x) * (1 + scale1) + shift1
    x = x + gate1 * F.gelu(self.s4(apply_mask(h, mask), spectrum))
    h = norm(x) * (1 + scale2) + shift2
    return x + gate2 * self.mlp(h)


@contextlib.contextmanager
def unfused_blocks() -> Iterator[None]:
    original = DenoiserBlock.forward
    DenoiserBlock.forward = unfused_forward
    try:
        yield
    finally:
        DenoiserBlock.forward = original


def denoiser_call(variant: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model_fn(x [B, C, L], t [B])`` of one variant (module docstring); call it inside ``context(variant)``."""
    model = denoiser()
    if variant in ("unfused", "recompute"):
        layers = [m for m in model.modules() if isinstance(m, S4)]

        def recompute(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            for layer in layers:
                layer.clear_kernel_cache()
            return model(x, t)

        return recompute
    if variant == "compiled":
        compiled, spectra = compile_denoiser(model, DEVICE), model.kernel_spectra(LENGTH)
        return lambda x, t: compiled(x, t, spectra=spectra)
    return model


def context(variant: str) -> contextlib.AbstractContextManager:
    if variant == "unfused":
        return unfused_blocks()
    return contextlib.nullcontext()


def ddim_call(variant: str) -> Callable[[], None]:
    model_fn, sampler = denoiser_call(variant), make_sampler("ddim", DiffusionSchedule(RUN.schedule))
    shape = (BATCH, RUN.denoiser.latent, LENGTH)

    def call() -> None:
        with torch.no_grad(), context(variant):
            sample(model_fn, shape, sampler, STEPS, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)

    return call


def step_call(variant: str) -> Callable[[], None]:
    model_fn = denoiser_call(variant)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, RUN.denoiser.latent, LENGTH, generator=g).to(DEVICE)
    t = torch.randint(0, 1000, (BATCH,), generator=g).to(DEVICE)

    def call() -> None:
        with torch.no_grad(), context(variant):
            model_fn(x, t)

    return call


def training_call(variant: str) -> Callable[[], None]:
    """One AdamW step on the MSE denoising loss (kernels computed in the graph: training never caches)."""
    model = denoiser().train()
    runner = torch.compile(model) if variant == "compiled" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = DiffusionSchedule(RUN.schedule)
    g = torch.Generator().manual_seed(2)
    batch = {"latents": torch.randn(BATCH, RUN.denoiser.latent, LENGTH, generator=g).to(DEVICE),
             "mask": torch.ones(BATCH, LENGTH, device=DEVICE)}

    def call() -> None:
        with unfused_blocks() if variant == "unfused" else contextlib.nullcontext():
            loss = diffusion_loss(runner, schedule, "mse", 0.0, 0.0, batch, torch.Generator(DEVICE).manual_seed(3))
            optimizer.zero_grad()
            loss["loss"].backward()
            optimizer.step()

    return call


SAMPLE_VARIANTS = ["recompute", "cached", "compiled"]
STEP_VARIANTS = ["unfused", "recompute", "cached", "compiled"]
TRAIN_VARIANTS = ["unfused", "fused", "compiled"]


def measure(
    benchmark, variant: str, baseline: str, make: Callable[[str], Callable[[], None]], rounds: int, unit: str,
    **info: object,
) -> None:
    """Time ``variant`` against ``baseline`` (run before every round of another variant) and record
    ``{baseline}_seconds``, ``speedup_vs_{baseline}`` and ``{unit}_per_second`` (``BATCH`` per call)."""
    if variant == baseline:
        median = base = run_benchmark(benchmark, make(variant), rounds)
    else:
        median, base = run_paired_benchmark(benchmark, make(variant), make(baseline), rounds)
    benchmark.extra_info.update(
        {f"{baseline}_seconds": base, f"speedup_vs_{baseline}": base / median, f"{unit}_per_second": BATCH / median},
        device=str(DEVICE), variant=variant, B=BATCH, L=LENGTH, **info,
    )


@pytest.mark.parametrize("variant", SAMPLE_VARIANTS)
def test_ddim20_sample(benchmark, variant):
    benchmark.group = f"DDIM-{STEPS} sample, paper Lorenz denoiser, B={BATCH} L={LENGTH}"
    measure(benchmark, variant, "recompute", ddim_call, SAMPLE_ROUNDS, "samples", steps=STEPS)


@pytest.mark.parametrize("variant", STEP_VARIANTS)
def test_denoiser_step(benchmark, variant):
    benchmark.group = f"denoiser step, paper Lorenz denoiser, B={BATCH} L={LENGTH}"
    measure(benchmark, variant, "unfused", step_call, STEP_ROUNDS, "trials")


@pytest.mark.parametrize("variant", TRAIN_VARIANTS)
def test_denoiser_training_step(benchmark, variant):
    benchmark.group = f"denoiser training step, paper Lorenz denoiser, B={BATCH} L={LENGTH}"
    measure(benchmark, variant, "unfused", training_call, TRAIN_ROUNDS, "trials")
