"""Tests for the LDNS models (:mod:`ldns_fast.models`) and the weight EMA (:mod:`ldns_fast.training.ema`).

Every expectation is computed independently inside the test: Poisson NLLs from
``torch.nn.functional.poisson_nll_loss`` (or by hand), the smoothness penalty by explicit loops, the
denoiser's identity-at-init path from its own submodules, sinusoidal features with numpy, and the EMA
recursion in float64 numpy. Models are tiny (hidden 16, d_state 8, L <= 40) and use the torch backend.
"""
from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.kernels import backend_status
from ldns_fast.models import Autoencoder, AutoencoderConfig, Denoiser, DenoiserConfig, autoencoder_loss, layers
from ldns_fast.models.autoencoder import smoothness_penalty
from ldns_fast.models.denoiser import DenoiserBlock, timestep_features
from ldns_fast.models.layers import Pointwise
from ldns_fast.training.ema import EMA

N_NEURONS, HIDDEN, LATENT, D_STATE = 10, 16, 4, 8
L_FULL, L_VALID = 40, 25

MODES = [("diag", True), ("diag", False), ("dplr", True), ("dplr", False)]


def ae_config(mode: str = "diag", bidirectional: bool = True, **kw) -> AutoencoderConfig:
    base = dict(
        n_neurons=N_NEURONS,
        hidden=HIDDEN,
        latent=LATENT,
        n_blocks=2,
        d_state=D_STATE,
        ssm_mode=mode,
        bidirectional=bidirectional,
        backend="torch",
    )
    base.update(kw)
    return AutoencoderConfig(**base)


def make_ae(mode: str = "diag", bidirectional: bool = True, seed: int = 0, **kw) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(ae_config(mode, bidirectional, **kw))


def make_denoiser(seed: int = 0, mode: str = "diag") -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(DenoiserConfig(latent=LATENT, hidden=HIDDEN, n_blocks=2, d_state=D_STATE, ssm_mode=mode,
                                   time_features=32, backend="torch"))


def perturb_modulation(model: Denoiser, scale: float = 0.5) -> None:
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.weight.normal_(0.0, scale)
            block.modulation.bias.normal_(0.0, scale)


def spikes_like(B: int, N: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((B, N, L), 1.5), generator=g)


def padded_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two trials of length 40: the first fully valid, the second valid for 25 bins (padding zeroed)."""
    spikes = spikes_like(2, N_NEURONS, L_FULL, seed)
    mask = torch.ones(2, L_FULL)
    mask[1, L_VALID:] = 0
    spikes[1, :, L_VALID:] = 0
    return spikes, mask


def with_garbage(spikes: torch.Tensor, mask: torch.Tensor, seed: int = 99) -> torch.Tensor:
    garbage = torch.poisson(torch.full(spikes.shape, 7.0), generator=torch.Generator().manual_seed(seed))
    keep = mask[:, None, :].expand_as(spikes).bool()
    return torch.where(keep, spikes, garbage)


# --------------------------------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,bidirectional", MODES)
def test_autoencoder_shapes_and_positive_rates(mode: str, bidirectional: bool) -> None:
    model = make_ae(mode, bidirectional)
    spikes = spikes_like(3, N_NEURONS, 17, seed=2)
    with torch.no_grad():
        rates, latents = model(spikes)
        assert latents.shape == (3, LATENT, 17)
        assert rates.shape == (3, N_NEURONS, 17)
        assert torch.equal(model.encode(spikes), latents)
        assert torch.equal(model.decode(latents), rates)
    assert torch.isfinite(rates).all() and (rates > 0).all()
    # Softplus keeps rates positive even for extreme latents.
    with torch.no_grad():
        extreme = model.decode(torch.full((1, LATENT, 3), -1e3))
    assert (extreme >= 0).all() and torch.isfinite(extreme).all()


@pytest.mark.parametrize("mode,bidirectional", MODES)
def test_autoencoder_padding_invariance(mode: str, bidirectional: bool) -> None:
    model = make_ae(mode, bidirectional)
    spikes, mask = padded_batch()
    garbage = with_garbage(spikes, mask)
    assert not torch.equal(garbage, spikes)
    with torch.no_grad():
        rates_zero, lat_zero = model(spikes, mask)
        rates_garb, lat_garb = model(garbage, mask)
        rates_trim, lat_trim = model(spikes[1:, :, :L_VALID])
        rates_full, lat_full = model(spikes[:1])
    v = slice(0, L_VALID)
    # garbage in the padding changes nothing anywhere
    torch.testing.assert_close(lat_garb, lat_zero, atol=1e-5, rtol=0)
    torch.testing.assert_close(rates_garb, rates_zero, atol=1e-5, rtol=0)
    # the padded trial's valid bins equal the trimmed trial encoded alone
    torch.testing.assert_close(lat_zero[1, :, v], lat_trim[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lat_garb[1, :, v], lat_trim[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rates_garb[1, :, v], rates_trim[0], atol=1e-5, rtol=0)
    # the fully valid trial in the batch equals it encoded alone without a mask
    torch.testing.assert_close(lat_garb[0], lat_full[0], atol=1e-5, rtol=0)
    # latents are zero on padded bins
    assert torch.all(lat_garb[1, :, L_VALID:] == 0)
    # sanity: the trimmed trial is not trivially constant (the comparison has teeth)
    assert lat_trim.std() > 1e-3


@pytest.mark.parametrize("mode", ["diag", "dplr"])
def test_autoencoder_causality(mode: str) -> None:
    t0 = 18
    spikes = spikes_like(2, N_NEURONS, 30, seed=3)
    changed = spikes.clone()
    changed[:, :, t0 + 1:] = torch.poisson(torch.full_like(changed[:, :, t0 + 1:], 4.0))

    causal = make_ae(mode, bidirectional=False)
    with torch.no_grad():
        a, b = causal.encode(spikes), causal.encode(changed)
    torch.testing.assert_close(a[..., : t0 + 1], b[..., : t0 + 1], atol=1e-5, rtol=0)
    assert (a[..., t0 + 1:] - b[..., t0 + 1:]).abs().max() > 1e-3

    bidir = make_ae(mode, bidirectional=True)
    with torch.no_grad():
        a, b = bidir.encode(spikes), bidir.encode(changed)
    assert (a[..., : t0 + 1] - b[..., : t0 + 1]).abs().max() > 1e-4


def test_decoder_is_pointwise_in_time() -> None:
    model = make_ae()
    torch.manual_seed(4)
    latents = torch.randn(2, LATENT, 12)
    changed = latents.clone()
    changed[:, :, 7] += torch.randn(2, LATENT) * 2
    with torch.no_grad():
        a, b = model.decode(latents), model.decode(changed)
    others = [t for t in range(12) if t != 7]
    assert torch.equal(a[..., others], b[..., others])
    assert (a[..., 7] - b[..., 7]).abs().max() > 1e-3
    # and each bin alone gives the same rates as the whole sequence
    with torch.no_grad():
        single = model.decode(latents[..., 3:4])
    torch.testing.assert_close(single[..., 0], a[..., 3], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Autoencoder loss
# --------------------------------------------------------------------------------------------------


def naive_smoothness(latents: torch.Tensor, mask: torch.Tensor | None, max_lag: int = 5) -> float:
    """sum_k 1/(1+k) * mean over valid pairs (b, t), (b, t+k) of ||z_t - z_{t+k}||^2, by explicit loops."""
    z = latents.detach().double().numpy()
    B, C, L = z.shape
    m = np.ones((B, L)) if mask is None else mask.double().numpy()
    total = 0.0
    for k in range(1, max_lag + 1):
        acc, count = 0.0, 0
        for b in range(B):
            for t in range(L - k):
                if m[b, t] and m[b, t + k]:
                    acc += sum((z[b, c, t] - z[b, c, t + k]) ** 2 for c in range(C))
                    count += 1
        if count:
            total += acc / count / (1 + k)
    return total


@pytest.mark.parametrize("use_mask", [False, True])
def test_smoothness_penalty_matches_naive_loops(use_mask: bool) -> None:
    torch.manual_seed(5)
    z = torch.randn(3, 4, 13)
    mask = None
    if use_mask:
        mask = torch.ones(3, 13)
        mask[1, 9:] = 0
        mask[2, 4:] = 0  # only 4 valid bins: lag 4 and 5 have no valid pairs in this trial
    expected = naive_smoothness(z, mask)
    assert float(smoothness_penalty(z, mask)) == pytest.approx(expected, rel=1e-5)


def test_smoothness_penalty_short_sequences() -> None:
    torch.manual_seed(6)
    z = torch.randn(2, 3, 4)  # L = 4: only lags 1..3 exist
    assert float(smoothness_penalty(z, None)) == pytest.approx(naive_smoothness(z, None), rel=1e-5)
    assert float(smoothness_penalty(torch.randn(2, 3, 1), None)) == 0.0
    # constant latents are perfectly smooth
    assert float(smoothness_penalty(torch.ones(2, 3, 9), None)) == 0.0


def test_loss_without_dropout_matches_independent_terms() -> None:
    config = ae_config(coordinated_dropout=0.0, l2_weight=0.3, smooth_weight=0.7)
    torch.manual_seed(0)
    model = Autoencoder(config)
    spikes, mask = padded_batch(seed=7)
    out = autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(0))
    rates, latents = model(spikes, mask)

    valid = mask.bool()
    # Poisson NLL, averaged over valid (trial, neuron, bin) entries
    nll_sum, n = 0.0, 0
    for b in range(2):
        r = rates[b][:, valid[b]]
        s = spikes[b][:, valid[b]]
        nll_sum += float(F.poisson_nll_loss(r, s, log_input=False, reduction="sum").detach())
        n += r.numel()
    torch.testing.assert_close(out["poisson"], torch.tensor(nll_sum / n), atol=1e-5, rtol=1e-5)
    # ... which is also rate - spikes * log(rate) written out by hand
    by_hand = (rates - spikes * torch.log(rates + 1e-8))[mask[:, None, :].expand_as(rates).bool()].mean()
    torch.testing.assert_close(out["poisson"], by_hand, atol=1e-5, rtol=1e-5)

    # L2 on valid latents (mean over valid bins and channels), smoothness by loops
    l2 = torch.cat([latents[b][:, valid[b]].flatten() for b in range(2)]).square().mean()
    torch.testing.assert_close(out["l2"], l2, atol=1e-6, rtol=1e-5)
    assert float(out["smooth"].detach()) == pytest.approx(naive_smoothness(latents, mask), rel=1e-5)

    total = out["poisson"] + 0.3 * out["l2"] + 0.7 * out["smooth"]
    torch.testing.assert_close(out["loss"], total, atol=1e-6, rtol=1e-6)
    # the loss is differentiable through the model
    out["loss"].backward()
    assert model.inp.weight.grad is not None and model.inp.weight.grad.abs().sum() > 0


def test_loss_with_coordinated_dropout_matches_manual_recomputation() -> None:
    p = 0.4
    config = ae_config(coordinated_dropout=p, l2_weight=0.05, smooth_weight=0.02)
    torch.manual_seed(0)
    model = Autoencoder(config)
    spikes, mask = padded_batch(seed=8)
    with torch.no_grad():
        out = autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(123))

        keep = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(123)) >= p
        rates, latents = model(spikes * keep / (1 - p), mask)
    target = (~keep) & mask[:, None, :].expand_as(spikes).bool()
    assert 0 < target.sum() < mask.sum() * N_NEURONS
    nll = F.poisson_nll_loss(rates[target], spikes[target], log_input=False, reduction="mean")
    torch.testing.assert_close(out["poisson"], nll, atol=1e-5, rtol=1e-5)
    assert float(out["smooth"]) == pytest.approx(naive_smoothness(latents, mask), rel=1e-5)
    total = out["poisson"] + 0.05 * out["l2"] + 0.02 * out["smooth"]
    torch.testing.assert_close(out["loss"], total, atol=1e-6, rtol=1e-6)

    # a different generator seed gives a different dropout draw, hence a different loss
    with torch.no_grad():
        other = autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(124))
    assert abs(float(other["poisson"]) - float(out["poisson"])) > 1e-6


class _FixedRates(nn.Module):
    """Stand-in model: records its input and returns fixed rates/latents, whatever the input."""

    def __init__(self, rates: torch.Tensor, latents: torch.Tensor) -> None:
        super().__init__()
        self.rates, self.latents = rates, latents
        self.seen: list[torch.Tensor] = []

    def forward(self, spikes: torch.Tensor, mask: torch.Tensor | None = None):
        self.seen.append(spikes.clone())
        return self.rates, self.latents


def test_dropout_poisson_term_uses_only_dropped_valid_entries() -> None:
    p = 0.5
    config = ae_config(coordinated_dropout=p)
    spikes, mask = padded_batch(seed=9)
    torch.manual_seed(10)
    rates = F.softplus(torch.randn(spikes.shape))
    latents = torch.randn(2, LATENT, L_FULL)  # deliberately non-zero on padded bins
    stub = _FixedRates(rates, latents)
    keep = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(5)) >= p
    valid = mask[:, None, :].expand_as(spikes).bool()

    base = autoencoder_loss(stub, config, spikes, mask, torch.Generator().manual_seed(5))["poisson"]
    # the model saw the kept entries rescaled by 1/(1-p) and zeros at the dropped ones
    torch.testing.assert_close(stub.seen[0], spikes * keep / (1 - p))

    # changing the targets at kept entries (model output fixed) does not change the Poisson term
    kept_changed = torch.where(keep, spikes + 3, spikes)
    again = autoencoder_loss(stub, config, kept_changed, mask, torch.Generator().manual_seed(5))["poisson"]
    assert float(again) == pytest.approx(float(base), rel=1e-6)

    # changing them at dropped valid entries does
    dropped_changed = torch.where(~keep & valid, spikes + 3, spikes)
    moved = autoencoder_loss(stub, config, dropped_changed, mask, torch.Generator().manual_seed(5))["poisson"]
    assert abs(float(moved) - float(base)) > 1e-3

    # changing them at dropped padded entries does not
    pad_changed = torch.where(~keep & ~valid, spikes + 3, spikes)
    padded = autoencoder_loss(stub, config, pad_changed, mask, torch.Generator().manual_seed(5))["poisson"]
    assert float(padded) == pytest.approx(float(base), rel=1e-6)

    # and the value is the mean NLL over exactly the dropped valid entries
    target = ~keep & valid
    expected = F.poisson_nll_loss(rates[target], spikes[target], log_input=False)
    torch.testing.assert_close(base, expected, atol=1e-6, rtol=1e-6)

    # the latent penalties only see valid bins, even if the model leaves values on padding
    out = autoencoder_loss(stub, config, spikes, mask, torch.Generator().manual_seed(5))
    l2 = torch.cat([latents[0].flatten(), latents[1, :, :L_VALID].flatten()]).square().mean()
    torch.testing.assert_close(out["l2"], l2, atol=1e-6, rtol=1e-6)
    assert float(out["smooth"]) == pytest.approx(naive_smoothness(latents, mask), rel=1e-5)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_padding_does_not_affect_loss(p: float) -> None:
    config = ae_config(coordinated_dropout=p)
    torch.manual_seed(0)
    model = Autoencoder(config)
    spikes, mask = padded_batch(seed=11)
    garbage = with_garbage(spikes, mask)
    with torch.no_grad():
        a = autoencoder_loss(model, config, spikes, mask, torch.Generator().manual_seed(3))
        b = autoencoder_loss(model, config, garbage, mask, torch.Generator().manual_seed(3))
    for key in ("loss", "poisson", "l2", "smooth"):
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_loss_without_mask_equals_all_valid_mask() -> None:
    config = ae_config(coordinated_dropout=0.25)
    torch.manual_seed(0)
    model = Autoencoder(config)
    spikes = spikes_like(2, N_NEURONS, 20, seed=12)
    with torch.no_grad():
        a = autoencoder_loss(model, config, spikes, None, torch.Generator().manual_seed(1))
        b = autoencoder_loss(model, config, spikes, torch.ones(2, 20), torch.Generator().manual_seed(1))
    for key in ("loss", "poisson", "l2", "smooth"):
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Denoiser
# --------------------------------------------------------------------------------------------------


def test_denoiser_is_identity_stack_at_init() -> None:
    model = make_denoiser()
    torch.manual_seed(13)
    x = torch.randn(3, LATENT, 21)
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        out = model(x, t)
        # every block is the identity: only the input conv and the output conv remain
        h = F.conv1d(x, model.inp.weight, model.inp.bias)
        expected = F.conv1d(h, model.out.weight, model.out.bias)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # also as composed from the module's own submodules
    with torch.no_grad():
        torch.testing.assert_close(out, model.out(model.inp(x)), atol=1e-6, rtol=1e-6)
        # at init the output does not depend on t
        torch.testing.assert_close(model(x, torch.tensor([500, 3, 1])), out, atol=1e-6, rtol=1e-6)

    perturb_modulation(model)
    with torch.no_grad():
        changed = model(x, t)
    assert (changed - expected).abs().max() > 1e-3


def test_denoiser_depends_on_t_after_perturbation() -> None:
    model = make_denoiser()
    perturb_modulation(model)
    torch.manual_seed(14)
    x = torch.randn(1, LATENT, 16).expand(2, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([5, 800]))
        same = model(x, torch.tensor([5, 5]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    torch.testing.assert_close(same[0], same[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0], same[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["diag", "dplr"])
def test_denoiser_padding_invariance(mode: str) -> None:
    model = make_denoiser(mode=mode)
    perturb_modulation(model)
    torch.manual_seed(15)
    x = torch.randn(2, LATENT, L_FULL)
    mask = torch.ones(2, L_FULL)
    mask[1, L_VALID:] = 0
    garbage = x.clone()
    garbage[1, :, L_VALID:] = torch.randn(LATENT, L_FULL - L_VALID) * 10
    x[1, :, L_VALID:] = 0
    t = torch.tensor([30, 400])
    with torch.no_grad():
        a = model(x, t, mask)
        b = model(garbage, t, mask)
        trimmed = model(x[1:, :, :L_VALID], t[1:])
        full = model(x[:1], t[:1])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(b[1, :, :L_VALID], trimmed[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b[0], full[0], atol=1e-5, rtol=0)
    assert torch.all(b[1, :, L_VALID:] == 0)
    assert trimmed.std() > 1e-3


def unfused_block(block: DenoiserBlock, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The adaLN-Zero block written out with plain torch ops (no fused kernels)."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation(F.gelu(emb))[..., None].chunk(6, dim=1)

    def norm(v: torch.Tensor) -> torch.Tensor:  # layer norm over channels at each time step
        mean = v.mean(1, keepdim=True)
        return (v - mean) / torch.sqrt(v.var(1, unbiased=False, keepdim=True) + 1e-5)

    h = norm(x) * (1 + scale1) + shift1
    if mask is not None:
        h = h * mask[:, None, :]
    x = x + gate1 * F.gelu(block.s4(h))
    return x + gate2 * block.mlp(norm(x) * (1 + scale2) + shift2)


def _fused_backend(name: str):
    ok, why = backend_status(name, "cpu")
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"{name} unavailable: {why}"))


@pytest.mark.parametrize("backend", ["torch", _fused_backend("triton")])
@pytest.mark.parametrize("masked", [False, True])
def test_denoiser_block_equals_the_unfused_formula(backend: str, masked: bool) -> None:
    """Outputs and gradients (input, embedding, every parameter) of the block with fused ops vs by hand
    (the norm from its definition, so a wrong eps or variance would show)."""
    torch.manual_seed(16)
    block = DenoiserBlock(HIDDEN, 8, D_STATE, "dplr", backend)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))  # nonzero modulation; channels differ
    x0, emb0 = torch.randn(3, HIDDEN, L_FULL), torch.randn(3, 8)
    mask = None
    if masked:
        mask = torch.ones(3, L_FULL)
        mask[1, L_VALID:] = 0
        mask[2, 3:] = 0
    upstream = torch.randn(3, HIDDEN, L_FULL)
    results = []
    for fn in (block, lambda *a: unfused_block(block, *a)):
        x, emb = x0.clone().requires_grad_(), emb0.clone().requires_grad_()
        out = fn(x, emb, mask)
        results.append([out.detach(), *torch.autograd.grad(out, [x, emb, *block.parameters()], upstream)])
    names = ["output", "d input", "d embedding", *(f"d {n}" for n, _ in block.named_parameters())]
    for name, fused, plain in zip(names, *results):
        assert plain.abs().max() > 0, name
        err = float((fused - plain).norm() / plain.norm())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"  # float32 rounding only


def test_denoiser_takes_precomputed_kernel_spectra() -> None:
    model = make_denoiser(mode="dplr")
    perturb_modulation(model)
    x, t = torch.randn(2, LATENT, 30), torch.tensor([3, 700])
    with torch.no_grad():
        expected = model(x, t)
        spectra = model.kernel_spectra(30)
        torch.testing.assert_close(model(x, t, spectra=spectra), expected, rtol=0, atol=0)
        assert [s.shape for s in spectra] == [(HIDDEN, 31)] * 2
        with pytest.raises(ValueError, match=r"one kernel spectrum per block \(2\), got 1"):
            model(x, t, spectra=spectra[:1])


def test_timestep_features_match_numpy() -> None:
    dim, max_period = 32, 10000.0
    t = torch.tensor([0, 1, 7, 250, 999])
    out = timestep_features(t, dim).numpy()
    half = dim // 2
    expected = np.zeros((len(t), dim))
    for i, ti in enumerate(t.tolist()):
        for j in range(half):
            freq = max_period ** (-j / half)
            expected[i, j] = math.cos(ti * freq)
            expected[i, half + j] = math.sin(ti * freq)
    assert out.shape == (5, dim)
    np.testing.assert_allclose(out, expected, atol=2e-4)
    # t = 0: all cosines 1, all sines 0
    np.testing.assert_array_equal(out[0, :half], 1.0)
    np.testing.assert_array_equal(out[0, half:], 0.0)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_paper() -> None:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(backend="torch"))  # Lorenz: 128 -> 256 x 4 blocks -> 8, DPLR N=64
    assert abs(count(ae) - 1.45e6) / 1.45e6 < 0.05
    den = Denoiser(DenoiserConfig(backend="torch"))  # Lorenz: 4 blocks x 64 channels
    assert abs(count(den) - 0.18e6) / 0.18e6 < 0.05
    monkey = Denoiser(DenoiserConfig(latent=16, hidden=256, n_blocks=6, backend="torch"))
    assert abs(count(monkey) - 2.7e6) / 2.7e6 < 0.05
    human = Denoiser(DenoiserConfig(latent=32, hidden=384, n_blocks=6, backend="torch"))
    assert abs(count(human) - 5.7e6) / 5.7e6 < 0.05


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------


def test_ema_decay_schedule() -> None:
    model = nn.Linear(3, 2)
    for max_decay, power in [(0.9999, 2 / 3), (0.9, 0.75), (0.5, 1.0)]:
        ema = EMA(model, max_decay=max_decay, power=power)
        for step in [1, 2, 3, 10, 100, 10_000, 10**7]:
            expected = min(max_decay, 1.0 - (1.0 + step) ** (-power))
            assert ema.decay(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # warm-up: increasing, then capped at max_decay
    ema = EMA(model, max_decay=0.99, power=2 / 3)
    values = [ema.decay(s) for s in range(1, 2000)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == 0.99
    with pytest.raises(ValueError):
        EMA(model, max_decay=1.0)


def test_ema_tracks_recursive_average() -> None:
    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    max_decay, power = 0.8, 0.7
    ema = EMA(model, max_decay=max_decay, power=power)
    names = [n for n, _ in model.named_parameters()]
    shadow = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    for step in range(1, 8):
        values = {n: rng.normal(size=tuple(p.shape)) for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.from_numpy(values[n]))
            model[1].running_mean.fill_(float(step))
        ema.update(model)
        d = min(max_decay, 1.0 - (1.0 + step) ** (-power))
        for n in names:
            shadow[n] = d * shadow[n] + (1.0 - d) * values[n]
    assert ema.step == 7
    got = dict(ema.shadow.named_parameters())
    for n in names:
        np.testing.assert_allclose(got[n].double().numpy(), shadow[n], rtol=1e-5, atol=1e-6)
        assert not got[n].requires_grad
    # buffers are copied, not averaged
    assert torch.all(ema.shadow[1].running_mean == 7.0)
    # the live model was not touched by the EMA
    for n, p in model.named_parameters():
        assert p.requires_grad


def test_ema_shadow_of_s4_model_tracks_updates() -> None:
    """The shadow's S4 kernel cache must not serve a stale kernel after an update."""
    model = make_ae("diag", True)
    ema = EMA(model, max_decay=0.5, power=1.0)
    spikes = spikes_like(1, N_NEURONS, 15, seed=17)
    with torch.no_grad():
        before = ema.shadow(spikes)[0]  # fills the shadow's kernel cache
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ema.update(model)
    with torch.no_grad():
        after = ema.shadow(spikes)[0]
        fresh = make_ae("diag", True)
        fresh.load_state_dict(ema.shadow.state_dict())
        reference = fresh(spikes)[0]
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, reference, atol=1e-6, rtol=1e-6)

    # loading an older state into the (cached) shadow brings back the older outputs
    state = {"shadow": {k: v.clone() for k, v in fresh.state_dict().items()}, "step": ema.step}
    ema.update(model)
    with torch.no_grad():
        moved = ema.shadow(spikes)[0]
    ema.load_state_dict(state)
    with torch.no_grad():
        restored = ema.shadow(spikes)[0]
    assert (moved - after).abs().max() > 1e-5
    torch.testing.assert_close(restored, reference, atol=1e-6, rtol=1e-6)


def test_ema_state_dict_round_trip() -> None:
    torch.manual_seed(18)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    ema = EMA(model, max_decay=0.9, power=2 / 3)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
    state = ema.state_dict()

    torch.manual_seed(19)
    other_model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    restored = EMA(other_model, max_decay=0.9, power=2 / 3)
    restored.load_state_dict(state)
    assert restored.step == ema.step == 3
    for a, b in zip(ema.shadow.parameters(), restored.shadow.parameters()):
        assert torch.equal(a, b)
        assert not b.requires_grad
    # both continue identically
    ema.update(model)
    restored.update(model)
    for a, b in zip(ema.shadow.parameters(), restored.shadow.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert ema.step == restored.step == 4


def test_ema_shadow_is_frozen_copy() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model)
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not ema.shadow.training
    for a, b in zip(ema.shadow.parameters(), model.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_conditional_denoiser_dropped_conditions_equal_the_unconditional_model() -> None:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(latent=LATENT, hidden=HIDDEN, n_blocks=2, d_state=D_STATE, ssm_mode="diag",
                                    time_features=32, backend="torch", cond_dim=2, behavior_channels=3))
    perturb_modulation(model)
    x, t = torch.randn(4, LATENT, 12), torch.tensor([5, 100, 500, 900])
    cond, behavior = torch.randn(4, 2), torch.randn(4, 3, 12)
    keep = torch.tensor([True, False, True, False])
    with torch.no_grad():
        unconditional = model(x, t)
        mixed = model(x, t, None, cond, behavior, keep, keep)
        conditional = model(x, t, None, cond, behavior)
        only_cond = model(x, t, None, cond, None)
    torch.testing.assert_close(mixed[~keep], unconditional[~keep], rtol=0, atol=0)
    torch.testing.assert_close(mixed[keep], conditional[keep], rtol=0, atol=0)
    assert not torch.allclose(conditional, unconditional)
    assert not torch.allclose(only_cond, conditional) and not torch.allclose(only_cond, unconditional)
    with torch.no_grad():
        dropped_behavior = model(x, t, None, cond, behavior, None, torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(dropped_behavior, only_cond, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cond_drop"):
        DenoiserConfig(cond_drop=1.0)


# --------------------------------------------------------------------------------------------------
# Compiled autoencoder (the training loop's ``compile`` option)
# --------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("in_channels,out_channels,groups,max_bytes,convolves", [
    (5, 7, 1, 0, False), (5, 7, 1, 2**20, True), (6, 6, 6, 2**20, False), (6, 4, 2, 0, True)],
    ids=["matmul", "small-convolution", "depthwise", "grouped-conv"])
def test_pointwise_layers_train_as_the_convolution(monkeypatch, in_channels: int, out_channels: int, groups: int,
                                                   max_bytes: int, convolves: bool) -> None:
    """Training mode runs an ungrouped 1x1 layer as the convolution while its activation fits in
    ``CONV_MAX_BYTES`` and as a batched matmul beyond, a depthwise one as w x + b, other grouped ones as
    convolutions (checked through a spy on ``Conv1d._conv_forward``); outputs and gradients (input and weights)
    equal ``F.conv1d``'s (float64, 1e-12)."""
    torch.manual_seed(0)
    monkeypatch.setattr(layers, "CONV_MAX_BYTES", max_bytes)
    layer = Pointwise(in_channels, out_channels, groups=groups).double().train()
    x = torch.randn(3, in_channels, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, out_channels, 7, dtype=torch.float64)
    params = [x, layer.weight, layer.bias]
    with mock.patch.object(nn.Conv1d, "_conv_forward", autospec=True, side_effect=nn.Conv1d._conv_forward) as conv:
        out = layer(x)
    assert conv.called == convolves
    grads = torch.autograd.grad(out, params, upstream)
    expected = F.conv1d(x, layer.weight, layer.bias, groups=groups)
    expected_grads = torch.autograd.grad(expected, params, upstream)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
