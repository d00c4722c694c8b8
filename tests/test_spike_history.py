"""Spike-history observation model: exact intensity, parameter recovery, sampling, input validation.

Covers the optional low-rank coupling between neurons too: exact intensity and gradients, recovery of a known
coupling, pairwise count correlations of its samples, and checkpoints of coupled and uncoupled models.
"""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ldns_fast.checkpoint import load_checkpoint, save_checkpoint
from ldns_fast.config import from_dict, to_dict
from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_rates(B: int, N: int, T: int, seed: int) -> torch.Tensor:
    """Positive, slowly varying per-bin rates ``[B, N, T]`` spanning roughly 0.1 .. 2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    freq = 0.02 + 0.06 * torch.rand(B, N, 1, generator=g)
    phase = 2 * math.pi * torch.rand(B, N, 1, generator=g)
    return 0.45 * torch.exp(1.5 * torch.sin(2 * math.pi * freq * t + phase))


def naive_intensity(model: SpikeHistoryModel, spikes, rates, mask) -> torch.Tensor:
    """The model's formula evaluated bin by bin in float64, coupling included (0 on padded bins)."""
    model = model.requires_grad_(False)
    B, N, T = spikes.shape
    clip = int(model.clip)

    def past(n: int, j: int, t: int, k: int) -> float:
        return min(float(spikes[n, j, t - k]), clip) if t - k >= 0 and mask[n, t - k] == 1 else 0.0

    out = torch.zeros(B, N, T, dtype=torch.float64)
    for n in range(B):
        for i in range(N):
            for t in range(T):
                if mask[n, t] == 0:
                    continue
                eta = float(model.w[i]) * math.log(float(rates[n, i, t])) + float(model.b[i])
                for k in range(1, model.history + 1):
                    eta += float(model.h[i, k - 1]) * past(n, i, t, k)
                for j in range(N):
                    if j == i:  # a neuron's own history acts through h alone
                        continue
                    for k in range(1, model.coupling_history + 1):
                        for r in range(model.coupling_rank):
                            weight = model.coupling_u[i, r] * model.coupling_g[r, k - 1] * model.coupling_v[r, j]
                            eta += float(weight) * past(n, j, t, k)
                out[n, i, t] = math.log1p(math.exp(eta))
    return out


def random_model(N: int, K: int, clip: int, seed: int, rank: int = 0, coupling_history: int = 5) -> SpikeHistoryModel:
    """A float64 model with random parameters, coupling factors included."""
    g = torch.Generator().manual_seed(seed)
    model = SpikeHistoryModel(N, history=K, clip=clip, coupling_rank=rank, coupling_history=coupling_history).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        model.w.copy_(0.5 + torch.rand(N, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("rank, coupling_history", [(0, 5), (2, 2), (3, 6)])  # coupling lags < and > K
@pytest.mark.parametrize("T", [3, 9])  # shorter and longer than the history
def test_intensity_matches_naive_loop(T, rank, coupling_history):
    B, N, K = 2, 3, 4
    model = random_model(N, K, clip=3, seed=0, rank=rank, coupling_history=coupling_history)
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


def test_rank_zero_is_the_uncoupled_model():
    saved_before_coupling = {"history": 4, "clip": 2, "l2": 1e-4, "max_iter": 5}  # a config without coupling keys
    model = SpikeHistoryModel.from_config(3, from_dict(SpikeHistoryConfig, saved_before_coupling))
    assert model.coupling_rank == 0 and model.coupling_history == 0
    assert list(model.state_dict()) == ["h", "w", "b", "clip"]
    assert [name for name, _ in model.named_parameters()] == ["h", "w", "b"]
    # a fresh coupled model starts without coupling (U = 0): the intensity of the uncoupled model
    coupled = SpikeHistoryModel(3, history=4, clip=2, coupling_rank=2, coupling_history=6).double()
    uncoupled = random_model(3, 4, clip=2, seed=1)
    coupled.load_state_dict(uncoupled.state_dict(), strict=False)
    assert bool((coupled.coupling_v != 0).all()) and bool((coupled.coupling_u == 0).all())
    g = torch.Generator().manual_seed(2)
    spikes = torch.randint(0, 4, (2, 3, 10), generator=g)
    rates = 0.1 + torch.rand(2, 3, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(coupled.intensity(spikes, rates), uncoupled.intensity(spikes, rates))


class _Intensity(nn.Module):
    """``model.intensity`` as a forward pass, so ``torch.func.functional_call`` can swap the parameters."""

    def __init__(self, model: SpikeHistoryModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, spikes: torch.Tensor, rates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.intensity(spikes, rates, mask)


def test_coupled_intensity_gradients_gradcheck():
    wrapper = _Intensity(random_model(3, 3, clip=2, seed=4, rank=2, coupling_history=2))
    names, values = zip(*((n, p.detach().clone().requires_grad_()) for n, p in wrapper.named_parameters()))
    assert any("coupling" in n for n in names)
    g = torch.Generator().manual_seed(5)
    spikes = torch.randint(0, 4, (2, 3, 5), generator=g)
    rates = 0.2 + torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.float64)
    mask[1, 3:] = 0

    def intensity(*params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrapper, dict(zip(names, params)), (spikes, rates, mask))

    assert torch.autograd.gradcheck(intensity, values)


def coupled_truth() -> SpikeHistoryModel:
    """8 neurons with refractory self-history and a rank-2 coupling over 3 lags (random, fixed seed)."""
    g = torch.Generator().manual_seed(13)
    model = SpikeHistoryModel(8, history=5, clip=5, coupling_rank=2, coupling_history=3)
    with torch.no_grad():
        model.h.copy_(torch.tensor([-2.0, -0.6, -0.2, 0.0, 0.0]).expand(8, 5))
        model.b.fill_(-0.5)
        model.coupling_u.copy_(1.5 * torch.randn(8, 2, generator=g))
        model.coupling_v.copy_(torch.randn(2, 8, generator=g))
        model.coupling_g.copy_(torch.tensor([[0.5, 0.25, 0.1], [0.4, -0.2, 0.1]]))
    return model


def cross_influence(model: SpikeHistoryModel) -> torch.Tensor:
    """Off-diagonal entries of ``sum_k U diag(g[:, k]) V``: each neuron's total drive per spike of another."""
    total = torch.einsum("ir,rk,rj->ij", model.coupling_u, model.coupling_g, model.coupling_v)
    return total[~torch.eye(model.n_neurons, dtype=torch.bool)].detach()


def count_correlations(spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlations of counts ``[B, N, T]`` over all trials and bins: zero-lag (pairs ``i != j``) and
    lag-1 (``corr(s_i[t+1], s_j[t])``, all ``i, j``)."""
    N = spikes.shape[1]
    x = spikes.double().transpose(0, 1)  # [N, B, T]

    def z(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(N, -1)
        return (v - v.mean(1, keepdim=True)) / v.std(1, correction=0, keepdim=True)

    zero, later, earlier = z(x), z(x[..., 1:]), z(x[..., :-1])
    off = ~torch.eye(N, dtype=torch.bool)
    return (zero @ zero.T / zero.shape[1])[off], (later @ earlier.T / later.shape[1]).flatten()


@pytest.fixture(scope="module")
def coupled_fits() -> dict:
    """Spikes simulated from :func:`coupled_truth` (60 trials x 80 bins), a held-out draw, and fits of rank 0 and 2."""
    truth = coupled_truth()
    rates = smooth_rates(60, 8, 80, seed=13)
    spikes = truth.sample(rates, torch.Generator().manual_seed(4))
    fits = {}
    for rank in (0, 2):
        config = SpikeHistoryConfig(history=5, clip=5, coupling_rank=rank, coupling_history=3)
        fits[rank] = SpikeHistoryModel.from_config(8, config)
        fits[rank].fit(spikes, rates, config=config)
    held_out = truth.sample(rates, torch.Generator().manual_seed(5))
    return {"truth": truth, "rates": rates, "spikes": spikes, "held_out": held_out, "fits": fits}


def test_coupled_fit_beats_uncoupled_and_recovers_the_coupling(coupled_fits):
    truth, rates, held_out, fits = (coupled_fits[k] for k in ("truth", "rates", "held_out", "fits"))
    nll = {rank: float(model.nll(held_out, rates)) for rank, model in fits.items()}
    assert nll[2] < nll[0] - 0.05  # held-out Poisson NLL per bin
    assert nll[2] < float(truth.nll(held_out, rates)) + 0.005
    fitted, true = cross_influence(fits[2]), cross_influence(truth)
    assert float(torch.corrcoef(torch.stack([fitted, true]))[0, 1]) > 0.9
    # the fit ran to a stationary point of its objective (a stalled line search would leave a large gradient)
    model, spikes = fits[2], coupled_fits["spikes"]
    loss = torch.nn.functional.poisson_nll_loss(model.intensity(spikes, rates), spikes, log_input=False, full=False,
                                                eps=0.0)
    penalty = sum(p.square().sum() for n, p in model.named_parameters() if n.startswith("coupling"))
    grads = torch.autograd.grad(loss + 1e-4 * (model.h.square().sum() + penalty), list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-4


def test_coupled_samples_reproduce_pairwise_count_correlations(coupled_fits):
    zero_data, lag1_data = count_correlations(coupled_fits["spikes"])
    rates = coupled_fits["rates"].repeat(4, 1, 1)  # 4 draws per trial: the samples' own noise is small
    errors = {}
    for rank, model in coupled_fits["fits"].items():
        zero, lag1 = count_correlations(model.sample(rates, torch.Generator().manual_seed(6)))
        errors[rank] = (float((zero - zero_data).abs().mean()), float((lag1 - lag1_data).abs().mean()))
    zero_floor = float(zero_data.abs().mean())
    assert zero_floor > 0.03  # the data hold correlations to reproduce
    assert errors[2][0] < 0.5 * errors[0][0] and errors[2][1] < 0.5 * errors[0][1], errors


def test_coupled_sampler_follows_the_intensity():
    """Each sampled count is the clipped Poisson draw from ``intensity`` of the counts sampled before it.

    Replays the sampler's generator stream bin by bin (no padding: the draws for padded bins use a different
    intensity and so a different amount of the stream).
    """
    model = random_model(4, 3, clip=3, seed=6, rank=2, coupling_history=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.4)
    rates = smooth_rates(5, 4, 30, seed=7).double()
    spikes = model.sample(rates, torch.Generator().manual_seed(8))
    assert spikes.sum() > 20
    lam = model.intensity(spikes, rates)
    replay = torch.Generator().manual_seed(8)
    for t in range(30):
        assert torch.equal(torch.poisson(lam[..., t], generator=replay).clamp(max=3), spikes[..., t]), t


@pytest.mark.parametrize("rank", [0, 2])
def test_checkpoint_round_trip_rebuilds_from_config(tmp_path: Path, rank):
    """The path ``LDNS.load`` takes: checkpoint helpers, ``from_dict`` of the saved config, ``from_config``."""
    config = SpikeHistoryConfig(history=4, clip=3, coupling_rank=rank, coupling_history=2)
    source = random_model(3, 4, clip=3, seed=9, rank=rank, coupling_history=2).float()
    save_checkpoint(tmp_path / "spike_history.pt", "spike_history", {"model": source.state_dict()}, to_dict(config))
    record = load_checkpoint(tmp_path / "spike_history.pt", "spike_history", ("model",))
    target = SpikeHistoryModel.from_config(3, from_dict(SpikeHistoryConfig, record["config"]))
    target.load_state_dict(record["model"])
    assert target.coupling_rank == rank
    assert list(target.state_dict()) == list(source.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    rates = torch.full((2, 3, 7), 0.4)
    spikes = source.sample(rates, torch.Generator().manual_seed(0))
    assert torch.equal(target.intensity(spikes, rates), source.intensity(spikes, rates))


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
    with pytest.raises(ValueError, match="coupling_rank"):
        SpikeHistoryModel(2, coupling_rank=3)
    with pytest.raises(ValueError, match="coupling_rank"):
        SpikeHistoryModel(2, coupling_rank=-1)
    with pytest.raises(ValueError, match="coupling_history"):
        SpikeHistoryModel(2, coupling_rank=1, coupling_history=0)
    with pytest.raises(ValueError, match="coupling_rank"):
        model.fit(spikes, rates, config=SpikeHistoryConfig(history=3, coupling_rank=1))
    coupled = SpikeHistoryModel(2, history=3, coupling_rank=1, coupling_history=2)
    with pytest.raises(ValueError, match="coupling_history"):
        coupled.fit(spikes, rates, config=SpikeHistoryConfig(history=3, coupling_rank=1, coupling_history=3))
    with pytest.raises(ValueError, match="coupling_l2"):
        coupled.fit(spikes, rates, config=SpikeHistoryConfig(history=3, coupling_rank=1, coupling_history=2,
                                                             coupling_l2=-1.0))
