"""The public API of a trained run (:mod:`ldns_fast.pipeline`) under bad input: clear errors for bad
arrays, devices, checkpoints and non-finite latents, counts never wrapped, sampling batched within a bin
budget; compiled sampling equal to eager on one bucketed shape."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ldns_fast.checkpoint import CheckpointError
from ldns_fast.config import merge, preset
from ldns_fast.data import DataFormatError
from ldns_fast.models import Autoencoder, Denoiser
from ldns_fast.pipeline import LDNS, Samples


@pytest.fixture(scope="module")
def model(tiny_run) -> LDNS:
    return LDNS.load(tiny_run[0])


def edited_run(tiny_run, tmp_path: Path, file: str, edit) -> Path:
    """A copy of the tiny run whose checkpoint ``file`` went through ``edit(record)`` (in place)."""
    run = shutil.copytree(tiny_run[0], tmp_path / "run")
    record = torch.load(run / file, weights_only=True)
    edit(record)
    torch.save(record, run / file)
    return run


def test_encode_and_decode_take_numpy_arrays(model: LDNS) -> None:
    counts = np.random.default_rng(0).poisson(0.5, (2, 6, 9)).astype(np.uint16)
    from_numpy = model.encode(counts, np.ones((2, 9)))
    assert torch.equal(from_numpy, model.encode(torch.as_tensor(counts, dtype=torch.float32)))
    assert torch.equal(model.decode(from_numpy.numpy()), model.decode(from_numpy))


@pytest.mark.parametrize("spikes, mask, message", [
    (np.zeros((0, 6, 5)), None, r"spikes must have shape \[B, N=6, T\] with B, T >= 1, got \(0, 6, 5\)"),
    (np.zeros((2, 6, 0)), None, r"with B, T >= 1, got \(2, 6, 0\)"),
    (np.zeros((2, 6, 5)), np.full((2, 5), 0.5), "mask must hold only 0 and 1"),
    (np.zeros((2, 6, 5)), np.full((2, 5), 2.0), "mask must hold only 0 and 1"),
    (np.zeros((2, 6, 5)), np.full((2, 5), np.nan), "mask must hold only 0 and 1"),
    (np.array([["a"]]), None, "spikes must be a numeric tensor or array"),
])
def test_encode_refuses_empty_batches_and_masks_outside_0_1(model: LDNS, spikes, mask, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.encode(spikes, mask)


def test_decode_refuses_nan_and_misshapen_latents(model: LDNS) -> None:
    with pytest.raises(ValueError, match="latents contain NaN or infinite values"):
        model.decode(torch.full((1, 2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"latents must have shape \[B, C_latent=2, T\]"):
        model.decode(torch.zeros(1, 3, 4))


@pytest.mark.parametrize("file, edit, message", [
    ("autoencoder.pt", lambda r: next(iter(r["model"].values())).fill_(float("nan")), "holds NaN or infinite"),
    ("diffusion.pt", lambda r: next(iter(r["ema"]["shadow"].values())).fill_(float("inf")), "holds NaN or infinite"),
    ("diffusion.pt", lambda r: r["latent_std"].fill_(float("nan")), "latent_std > 0"),
    ("diffusion.pt", lambda r: r["latent_std"].zero_(), "latent_std > 0"),
    ("diffusion.pt", lambda r: r.update(latent_mean=torch.zeros(5)), r"shape \[2\]"),
    ("diffusion.pt", lambda r: r.update(bin_width="0.01"), "bin_width must be a positive finite number"),
    ("diffusion.pt", lambda r: r.update(bin_width=-0.01), "bin_width must be a positive finite number"),
    ("diffusion.pt", lambda r: r.update(n_bins=0), "n_bins must be a positive integer"),
    ("diffusion.pt", lambda r: r.update(config="hidden: 8"), "config must be a mapping"),
    ("diffusion.pt", lambda r: r["config"]["denoiser"].update(hidden="eight"), "does not hold a usable model"),
    ("diffusion.pt", lambda r: r["config"]["denoiser"].update(hidden=16), "size mismatch"),
    ("diffusion.pt", lambda r: r["config"]["autoencoder"].update(n_blocks=2), "autoencoder.pt does not hold"),
])
def test_load_refuses_malformed_or_non_finite_checkpoints(tiny_run, tmp_path: Path, file: str, edit,
                                                         message: str) -> None:
    run = edited_run(tiny_run, tmp_path, file, edit)
    with pytest.raises(CheckpointError, match=message):
        LDNS.load(run)


def test_load_refuses_unknown_or_missing_devices(tiny_run) -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        LDNS.load(tiny_run[0], "gpu")
    with pytest.raises(ValueError, match="cuda:99"):
        LDNS.load(tiny_run[0], "cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            LDNS.load(tiny_run[0], "cuda")


def test_counts_beyond_the_file_dtype_are_refused_not_wrapped() -> None:
    spikes = torch.zeros(1, 2, 3)
    spikes[0, 1, 2] = 70000  # wrapped to 70000 - 65536 = 4464 in uint16 before
    samples = Samples(torch.zeros(1, 1, 3), torch.ones(1, 2, 3), spikes, torch.tensor([3]))
    with pytest.raises(DataFormatError, match="holds a count of 70000, above 65535"):
        samples.to_spike_data(0.01)
    spikes[0, 1, 2] = 65535
    assert samples.to_spike_data(0.01).spikes[0, 2, 1] == 65535


def test_sampling_batches_stay_within_the_bin_budget(model: LDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = []
    forward = type(model.denoiser).forward

    def recording(self, x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(model.denoiser), "forward", recording)
    lengths = [16, 3, 9, 5, 12, 2]
    parts = list(model.batches(6, lengths=lengths, steps=1, seed=2, batch_size=3, max_bins=20))
    assert [start for start, _ in parts] == [0, 1, 3, 4, 5]  # consecutive: [16], [3, 9], [5], [12], [2]
    assert [p.lengths.tolist() for _, p in parts] == [[16], [3, 9], [5], [12], [2]]
    assert sorted(set(shapes)) == sorted({(1, 2, 16), (2, 2, 9), (1, 2, 5), (1, 2, 12), (1, 2, 2)})
    assert all(B * T <= 20 for B, _, T in shapes)
    together = model.sample(6, lengths=lengths, steps=1, seed=2, batch_size=3, max_bins=20)
    for start, part in parts:
        T = part.latents.shape[-1]
        assert torch.equal(together.latents[start : start + len(part.lengths), :, :T], part.latents)
    with pytest.raises(ValueError, match="a trial of 16 bins exceeds max_bins=15"):
        model.batches(6, lengths=lengths, max_bins=15)  # refused when asked, before any batch runs


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "length must be a positive integer"),
    ({"length": 2.5}, "length must be a positive integer"),
    ({"lengths": [3.7, 4.0]}, r"lengths must hold n=2 positive integers"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
    ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
    ({"steps": 0}, "num_inference_steps"),
])
def test_sample_refuses_bad_settings(model: LDNS, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.sample(2, **kwargs)


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
