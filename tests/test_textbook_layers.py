"""The training benchmark's naive-implementation baseline (``benchmarks/textbook.py``) computes the same model.

Under :func:`benchmarks.textbook.textbook_layers` a denoiser and an autoencoder (tiny, float64, naive kernels)
must give the outputs and parameter gradients they give with the library's own layers; the textbook forms
must actually run (spies on them and on ``Conv1d.forward``), and the library's names return after the block.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from benchmarks import textbook
from ldns_fast.models import (Autoencoder, AutoencoderConfig, Denoiser, DenoiserConfig, autoencoder_loss, denoiser,
                              layers)
from ldns_fast.ssm import s4

TOL = dict(rtol=1e-10, atol=1e-12)  # float64: the two forms differ only by rounding order


def outputs_and_grads(model: torch.nn.Module, loss_fn) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = loss_fn()
    out.backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same_under_textbook_layers(model: torch.nn.Module, loss_fn, used: tuple[str, ...]) -> None:
    """Same outputs and gradients with and without the textbook forms; each form named in ``used`` was called
    (through a spy) and ``Conv1d.forward`` ran every 1x1 layer."""
    ours = outputs_and_grads(model, loss_fn)
    with contextlib.ExitStack() as stack:
        spies = {name: stack.enter_context(mock.patch.object(textbook, name, wraps=getattr(textbook, name)))
                 for name in used}
        conv = stack.enter_context(mock.patch.object(torch.nn.Conv1d, "forward", autospec=True,
                                                     side_effect=torch.nn.Conv1d.forward))
        with textbook.textbook_layers():
            assert s4.fft_conv is textbook.fft_conv and denoiser.modulated_norm is textbook.modulated_norm
            plain = outputs_and_grads(model, loss_fn)
        assert all(spy.called for spy in spies.values()), {name: spy.called for name, spy in spies.items()}
        pointwise = sum(isinstance(m, layers.Pointwise) for m in model.modules())
        assert pointwise > 0 and conv.call_count >= pointwise
    assert s4.fft_conv is not textbook.fft_conv and layers.Pointwise.forward is not torch.nn.Conv1d.forward
    assert len(plain) == len(ours) > 1
    for a, b in zip(ours, plain):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_denoiser_same_under_textbook_layers(mode: str) -> None:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(latent=4, hidden=16, n_blocks=2, d_state=8, ssm_mode=mode,
                                    backend="naive")).double()
    with torch.no_grad():  # leave the adaLN-Zero identity so the norms and gates do real work
        for block in model.blocks:
            block.modulation.weight.normal_(0, 0.3)
            block.modulation.bias.normal_(0, 0.3)
    x, t = torch.randn(3, 4, 24, dtype=torch.float64), torch.randint(0, 1000, (3,))
    mask = (torch.arange(24) < torch.tensor([24, 17, 9])[:, None]).double()
    assert_same_under_textbook_layers(model, lambda: model(x, t, mask=mask).square().mean(),
                                      used=("fft_conv", "modulated_norm", "gelu_gate_residual"))


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_autoencoder_same_under_textbook_layers(mode: str) -> None:
    torch.manual_seed(0)
    config = AutoencoderConfig(n_neurons=10, hidden=16, latent=4, n_blocks=2, d_state=8, ssm_mode=mode,
                               backend="naive")
    model = Autoencoder(config).double()
    spikes = torch.poisson(torch.full((3, 10, 24), 0.5, dtype=torch.float64))
    mask = torch.ones(3, 24, dtype=torch.float64)
    assert_same_under_textbook_layers(
        model, lambda: autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(0))["loss"],
        used=("fft_conv",))
