"""Spike-history observation model: exact intensity, parameter recovery, sampling, input validation."""
import math

import pytest
import torch

from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel


def smooth_rates(B: int, N: int, T: int, seed: int) -> torch.Tensor:
    """Positive, slowly varying per-bin rates ``[B, N, T]`` spanning roughly 0.1 .. 2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    freq = 0.02 + 0.06 * torch.rand(B, N, 1, generator=g)
    phase = 2 * math.pi * torch.rand(B, N, 1, generator=g)
    return 0.45 * torch.exp(1.5 * torch.sin(2 * math.pi * freq * t + phase))


def naive_intensity(model: SpikeHistoryModel, spikes, rates, mask) -> torch.Tensor:
    """The model's formula evaluated bin by bin (0 on padded bins)."""
    model = model.requires_grad_(False)
    B, N, T = spikes.shape
    clip = int(model.clip)
    out = torch.zeros(B, N, T, dtype=torch.float64)
    for n in range(B):
        for i in range(N):
            for t in range(T):
                if mask[n, t] == 0:
                    continue
                eta = float(model.w[i]) * math.log(float(rates[n, i, t])) + float(model.b[i])
                for k in range(1, model.history + 1):
                    if t - k >= 0 and mask[n, t - k] == 1:
                        eta += float(model.h[i, k - 1]) * min(float(spikes[n, i, t - k]), clip)
                out[n, i, t] = math.log1p(math.exp(eta))
    return out


def random_model(N: int, K: int, clip: int, seed: int) -> SpikeHistoryModel:
    g = torch.Generator().manual_seed(seed)
    model = SpikeHistoryModel(N, history=K, clip=clip).double()
    with torch.no_grad():
        model.h.copy_(torch.randn(N, K, generator=g, dtype=torch.float64))
        model.w.copy_(0.5 + torch.rand(N, generator=g, dtype=torch.float64))
        model.b.copy_(torch.randn(N, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("T", [3, 9])  # shorter and longer than the history
def test_intensity_matches_naive_loop(T):
    B, N, K = 2, 3, 4
    model = random_model(N, K, clip=3, seed=0)
    g = torch.Generator().manual_seed(1)
    spikes = torch.randint(0, 7, (B, N, T), generator=g)  # counts above clip=3 included
    rates = 0.05 + torch.rand(B, N, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T)
    mask[1, T - 2 :] = 0
    rates[1, :, T - 2 :] = 0.0  # padded rates may be zero
    torch.testing.assert_close(model.intensity(spikes, rates, mask), naive_intensity(model, spikes, rates, mask))
    full = torch.ones(B, T)
    rates_full = rates.clamp_min(0.05)
    torch.testing.assert_close(model.intensity(spikes, rates_full), naive_intensity(model, spikes, rates_full, full))


def true_model() -> SpikeHistoryModel:
    model = SpikeHistoryModel(3, history=5, clip=5)
    with torch.no_grad():
        model.h.copy_(torch.tensor([
            [-2.0, -0.5, 0.2, 0.1, 0.0],
            [-2.0, 0.3, 0.1, 0.0, -0.1],
            [-2.0, -0.2, -0.1, 0.2, 0.1],
        ]))
        model.w.fill_(1.0)
        model.b.fill_(0.2)
    return model


def test_fit_recovers_known_parameters():
    truth = true_model()
    B, T = 40, 200
    rates = smooth_rates(B, 3, T, seed=2)
    lengths = torch.randint(150, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rates = rates * mask[:, None]
    spikes = truth.sample(rates, torch.Generator().manual_seed(4), mask)

    model = SpikeHistoryModel(3, history=5, clip=5)
    init_nll = float(model.nll(spikes, rates, mask))
    losses = model.fit(spikes, rates, mask, SpikeHistoryConfig(history=5, clip=5, l2=1e-4, max_iter=200))
    assert losses[-1] < losses[0]
    assert float(model.nll(spikes, rates, mask)) < init_nll
    with torch.no_grad():
        assert (model.h - truth.h).abs().max() < 0.3
        assert (model.w - truth.w).abs().max() < 0.3
        assert (model.b - truth.b).abs().max() < 0.3
        assert float(model.nll(spikes, rates, mask)) <= float(truth.nll(spikes, rates, mask)) + 1e-4


def test_sample_reproducible_and_masked():
    model = true_model()
    rates = smooth_rates(4, 3, 50, seed=5)
    mask = torch.ones(4, 50)
    mask[2, 30:] = 0
    a = model.sample(rates, torch.Generator().manual_seed(7), mask)
    b = model.sample(rates, torch.Generator().manual_seed(7), mask)
    c = model.sample(rates, torch.Generator().manual_seed(8), mask)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == rates.shape
    assert (a[2, :, 30:] == 0).all()
    assert (a == a.round()).all() and (a >= 0).all()


def test_sample_counts_clipped():
    model = SpikeHistoryModel(2, history=3, clip=4)  # h = 0, w = 1, b = 0
    spikes = model.sample(torch.full((5, 2, 40), 30.0), torch.Generator().manual_seed(0))
    assert spikes.max() == 4


def test_sample_mean_without_history():
    model = SpikeHistoryModel(3, history=5, clip=5)  # h = 0, w = 1, b = 0: lambda = log(1 + r)
    rates = smooth_rates(200, 3, 100, seed=6) * 0.5
    spikes = model.sample(rates, torch.Generator().manual_seed(9))
    expected = torch.log1p(rates).double().mean()
    standard_error = math.sqrt(float(expected) / spikes.numel())
    assert abs(float(spikes.double().mean()) - float(expected)) < 4 * standard_error


def test_state_dict_round_trip():
    source = random_model(3, 4, clip=2, seed=3).float()
    target = SpikeHistoryModel(3, history=4, clip=5)
    target.load_state_dict(source.state_dict())
    assert int(target.clip) == 2
    assert torch.equal(target.h, source.h)


def test_bad_inputs_raise():
    model = SpikeHistoryModel(2, history=3)
    rates = torch.full((2, 2, 6), 0.5)
    spikes = torch.zeros(2, 2, 6)
    with pytest.raises(ValueError, match="spikes"):
        model.intensity(torch.zeros(2, 2, 5), rates)
    with pytest.raises(ValueError, match="spikes"):
        model.intensity(spikes - 1, rates)
    with pytest.raises(ValueError, match="spikes"):
        model.fit(spikes + 0.5, rates)
    with pytest.raises(ValueError, match="rates"):
        model.intensity(spikes, torch.zeros(2, 2, 6))
    with pytest.raises(ValueError, match="rates"):
        model.nll(spikes, torch.full((2, 2, 6), float("nan")))
    with pytest.raises(ValueError, match="rates"):
        model.sample(torch.full((2, 3, 6), 0.5), torch.Generator())
    with pytest.raises(ValueError, match="mask"):
        model.intensity(spikes, rates, torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask"):
        model.sample(rates, torch.Generator(), torch.full((2, 6), 0.5))
    with pytest.raises(ValueError, match="config"):
        model.fit(spikes, rates, config=SpikeHistoryConfig(history=20))
    with pytest.raises(ValueError, match="history"):
        SpikeHistoryModel(2, history=0)
