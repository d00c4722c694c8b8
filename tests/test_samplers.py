"""Tests for :mod:`ldns_fast.diffusion`, each against maths written independently here.

Oracles: numpy cumulative products of the betas, the timestep spacing formulas, the textbook DDPM
posterior, the DPM-Solver++(2M) update in the paper's form, and Gaussian data ``x0 ~ N(MU, S^2)``,
for which the optimal denoiser and the probability-flow ODE solution are closed form.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldns_fast.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DiffusionSchedule,
    DPMSolverPPSampler,
    NoiseSchedule,
    SPACINGS,
    make_sampler,
    make_timesteps,
    sample,
)

T = 1000
MU, S = 0.5, 1.0  # Gaussian data x0 ~ N(MU, S^2), per element


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def np_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = T) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, steps))


ABAR = np_alphas_cumprod()


def gaussian_denoiser(prediction_type: str = "epsilon"):
    """Exact E[eps | x_t] (or E[v | x_t]) for x0 ~ N(MU, S^2): x_t ~ N(a MU, a^2 S^2 + s^2)."""
    sqrt_ab = torch.from_numpy(np.sqrt(ABAR))
    sqrt_1m_ab = torch.from_numpy(np.sqrt(1 - ABAR))

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = sqrt_ab[t].to(x.dtype).view(-1, 1, 1)
        s = sqrt_1m_ab[t].to(x.dtype).view(-1, 1, 1)
        var = a * a * S**2 + s * s
        eps = s * (x - a * MU) / var
        if prediction_type == "epsilon":
            return eps
        x0 = MU + a * S**2 * (x - a * MU) / var
        return a * eps - s * x0

    return model_fn


def exact_ode_solution(x_start: torch.Tensor, t_start: int) -> torch.Tensor:
    """Probability-flow ODE from x at t_start to abar = 1: the 1-D flow is monotone and affine, so it
    keeps (x - a MU) / sqrt(a^2 S^2 + 1 - a^2) fixed."""
    ab = ABAR[t_start]
    return MU + S * (x_start - math.sqrt(ab) * MU) / math.sqrt(ab * S**2 + 1 - ab)


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def run(name: str, n: int, shape=(4000, 1, 1), seed: int = 0, initial_noise=None, pred="epsilon", **kw):
    schedule = DiffusionSchedule(NoiseSchedule(prediction_type=pred))
    generator = torch.Generator().manual_seed(seed)
    dtype = initial_noise.dtype if initial_noise is not None else torch.float32
    sampler = make_sampler(name, schedule, **kw)
    return sample(gaussian_denoiser(pred), shape, sampler, n, generator, dtype=dtype, initial_noise=initial_noise)


# --- schedule -------------------------------------------------------------------------------------


def test_linear_alphas_cumprod_matches_numpy():
    schedule = DiffusionSchedule()
    assert schedule.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(schedule.betas.numpy(), np.linspace(1e-4, 0.02, T), rtol=1e-14)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), ABAR, rtol=1e-12)
    assert schedule.alpha_bar(-1) == 1.0 and schedule.alpha_bar(17) == pytest.approx(ABAR[17], rel=1e-14)


def test_cosine_alphas_cumprod_matches_formula():
    n, offset = 50, 0.008
    f = np.cos((np.arange(n + 1) / n + offset) / (1 + offset) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    schedule = DiffusionSchedule(NoiseSchedule(num_train_timesteps=n, kind="cosine"))
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)


@pytest.mark.parametrize("pred", ["epsilon", "v"])
def test_forward_target_round_trip(pred):
    schedule = DiffusionSchedule(NoiseSchedule(prediction_type=pred))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    a = torch.from_numpy(np.sqrt(ABAR[t.numpy()])).view(-1, 1, 1)
    s = torch.from_numpy(np.sqrt(1 - ABAR[t.numpy()])).view(-1, 1, 1)

    xt = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(xt, a * x0 + s * noise, rtol=1e-13, atol=1e-13)
    target = schedule.target(x0, noise, t)
    torch.testing.assert_close(target, noise if pred == "epsilon" else a * noise - s * x0, rtol=1e-13, atol=1e-13)
    x0_hat, eps_hat = schedule.predict_x0_eps(target, xt, t)
    # at t = 999 (sqrt(abar) = 0.006) epsilon -> x0 divides by sqrt(abar): allow its rounding.
    torch.testing.assert_close(x0_hat, x0, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-12, atol=1e-12)

    x32 = schedule.add_noise(x0.float(), noise.float(), 10)  # scalar t, float32 in -> float32 out
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32, (math.sqrt(ABAR[10]) * x0 + math.sqrt(1 - ABAR[10]) * noise).float())


# --- timesteps ------------------------------------------------------------------------------------

STEP_COUNTS = [1, 10, 20, 50, 1000]


def reference_timesteps(n: int, spacing: str) -> np.ndarray:
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    if spacing == "leading":
        return (np.arange(n) * (T // n))[::-1]
    if spacing == "linspace":
        return np.round(np.linspace(0, T - 1, n)).astype(np.int64)[::-1]
    # logsnr: nearest timestep to each of n log-SNR values evenly spaced from lambda_{T-1} to lambda_0, then,
    # from the clean end up, each raised to one above its successor where they would coincide (entry k
    # capped at T-1-k first, so that the top stays in range).
    lam = 0.5 * np.log(ABAR / (1 - ABAR))
    nearest = [int(np.argmin(np.abs(lam - target))) for target in np.linspace(lam[-1], lam[0], n)]
    steps = [min(nearest[-1], T - n)]
    for k in range(n - 2, -1, -1):
        steps.insert(0, max(min(nearest[k], T - 1 - k), steps[0] + 1))
    return np.array(steps)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", STEP_COUNTS)
def test_timesteps(spacing, n):
    steps = make_timesteps(DiffusionSchedule(), n, spacing)
    assert steps.dtype == torch.long and steps.shape == (n,)
    np.testing.assert_array_equal(steps.numpy(), reference_timesteps(n, spacing))
    assert bool((steps[:-1] > steps[1:]).all()) and 0 <= int(steps.min()) and int(steps.max()) <= T - 1
    if spacing in ("trailing", "logsnr"):
        assert int(steps[0]) == T - 1
    if n == T:
        np.testing.assert_array_equal(steps.numpy(), np.arange(T - 1, -1, -1))

    sampler = DDIMSampler(DiffusionSchedule(), spacing=spacing)
    sampler.set_timesteps(n)
    assert torch.equal(sampler.timesteps, steps)
    chain = [sampler.prev_timestep(t) for t in steps.tolist()]
    assert chain == steps.tolist()[1:] + [-1]


def test_trailing_exact_halves_round_to_even():
    # T / n = 62.5: every other entry of T - k T / n is an exact half.
    expected = [round(T - k * T / 16) - 1 for k in range(16)]  # Python's round is half-to-even
    assert make_timesteps(DiffusionSchedule(), 16, "trailing").tolist() == expected


# --- samplers on Gaussian data ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, n, kw, pred",
    [
        ("ddpm", 1000, {}, "epsilon"),
        ("ddim", 50, {"eta": 0.0}, "epsilon"),
        ("ddim", 50, {"eta": 0.0}, "v"),
        ("dpm++", 20, {}, "epsilon"),
        ("dpm++", 20, {}, "v"),
        ("sde-dpm++", 20, {}, "epsilon"),
    ],
)
def test_gaussian_moments(name, n, kw, pred):
    x = run(name, n, shape=(200, 2, 10), pred=pred, **kw)
    assert x.shape == (200, 2, 10) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert abs(float(x.mean()) - MU) < 0.05 * S
    assert abs(float(x.std()) / S - 1) < 0.06


@pytest.mark.parametrize("n", [1000, 10])
def test_ddpm_step_is_the_posterior(n):
    """One DDPM step = mean of q(x_s | x_t, x0_hat) + sqrt(posterior variance) z; for n = T that is
    (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_tilde_t) z."""
    sampler = DDPMSampler(DiffusionSchedule())
    sampler.set_timesteps(n)
    t, s = sampler.timesteps[3].item(), sampler.timesteps[4].item()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)
    out = sampler.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    z = torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    at, as_ = ABAR[t], ABAR[s]
    x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
    mean = math.sqrt(as_) * (1 - at / as_) / (1 - at) * x0 + math.sqrt(at / as_) * (1 - as_) / (1 - at) * x
    var = (1 - as_) / (1 - at) * (1 - at / as_)
    if n == T:
        beta = np.linspace(1e-4, 0.02, T)[t]
        assert var == pytest.approx(beta * (1 - as_) / (1 - at), rel=1e-9)
        torch.testing.assert_close(mean, (x - beta / math.sqrt(1 - at) * eps) / math.sqrt(1 - beta))
    torch.testing.assert_close(out, mean + math.sqrt(var) * z)


def test_ddim_eta_one_is_ddpm():
    ddpm = run("ddpm", 100, shape=(50, 1, 4), seed=3)
    ddim = run("ddim", 100, shape=(50, 1, 4), seed=3, eta=1.0)
    assert torch.equal(ddpm, ddim)


def test_last_step_returns_x0_hat():
    for sampler in (DDIMSampler(DiffusionSchedule()), DPMSolverPPSampler(DiffusionSchedule())):
        sampler.set_timesteps(5)
        x, eps = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
        t = sampler.timesteps[-1].item()
        expected = (x - math.sqrt(1 - ABAR[t]) * eps) / math.sqrt(ABAR[t])
        torch.testing.assert_close(sampler.step(eps, t, x), expected)


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_deterministic_given_initial_noise(name):
    noise = torch.randn(30, 2, 5, generator=torch.Generator().manual_seed(11))
    a = run(name, 25, shape=noise.shape, seed=1, initial_noise=noise)
    b = run(name, 25, shape=noise.shape, seed=2, initial_noise=noise)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name, kw", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("sde-dpm++", {})])
def test_seeded_reproducibility(name, kw):
    noise = torch.randn(30, 2, 5, generator=torch.Generator().manual_seed(11))
    a, b, c = (run(name, 40, shape=(30, 2, 5), seed=seed, **kw) for seed in (5, 5, 6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the per-step noise also comes from the generator
    d, e = (run(name, 40, shape=(30, 2, 5), seed=seed, initial_noise=noise, **kw) for seed in (5, 6))
    assert not torch.allclose(d, e)


@pytest.mark.parametrize("spacing", ["trailing", "logsnr"])
def test_dpm_solver_matches_exact_ode(spacing):
    z = torch.randn(2000, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_ode_solution(z, T - 1)  # both spacings start at T - 1
    ddim_1000 = run("ddim", 1000, shape=z.shape, initial_noise=z)
    ddim_20 = run("ddim", 20, shape=z.shape, initial_noise=z, spacing=spacing)
    dpm_20 = run("dpm++", 20, shape=z.shape, initial_noise=z, spacing=spacing)
    assert rms(ddim_1000 - exact) < 5e-3 * S
    assert rms(dpm_20 - exact) < 2e-2 * S
    assert rms(dpm_20 - ddim_1000) < 2e-2 * S
    assert rms(dpm_20 - exact) < rms(ddim_20 - exact) / 5


def test_dpm_solver_second_order_step():
    """Second step in the paper's form: x_s = (sig_s / sig_t) x_t - a_s (e^-h - 1) D,
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h, h = lam_s - lam_t."""
    sampler = DPMSolverPPSampler(DiffusionSchedule())
    sampler.set_timesteps(10)
    t0, t1, t2 = sampler.timesteps[:3].tolist()
    g = torch.Generator().manual_seed(2)
    x0_, e0, e1 = (torch.randn(3, 2, 6, generator=g, dtype=torch.float64) for _ in range(3))
    x1 = sampler.step(e0, t0, x0_)
    x2 = sampler.step(e1, t1, x1)

    alpha, sigma = np.sqrt(ABAR), np.sqrt(1 - ABAR)
    lam = np.log(alpha / sigma)
    d_prev = (x0_ - sigma[t0] * e0) / alpha[t0]
    d_t = (x1 - sigma[t1] * e1) / alpha[t1]
    h, r = lam[t2] - lam[t1], (lam[t1] - lam[t0]) / (lam[t2] - lam[t1])
    D = (1 + 1 / (2 * r)) * d_t - 1 / (2 * r) * d_prev
    expected = sigma[t2] / sigma[t1] * x1 - alpha[t2] * (np.exp(-h) - 1) * D
    torch.testing.assert_close(x2, expected, rtol=1e-10, atol=1e-10)


def test_sde_dpm_solver_second_order_step():
    """SDE-DPM-Solver++(2M) in the paper's form: x_s = (sig_s / sig_t) e^-h x_t + a_s (1 - e^-2h) D
    + sig_s sqrt(1 - e^-2h) z, with D as in the ODE solver; its first step is a DDPM step."""
    sampler = make_sampler("sde-dpm++", DiffusionSchedule())
    sampler.set_timesteps(10)
    t0, t1, t2 = sampler.timesteps[:3].tolist()
    g = torch.Generator().manual_seed(2)
    x0_, e0, e1 = (torch.randn(3, 2, 6, generator=g, dtype=torch.float64) for _ in range(3))
    x1 = sampler.step(e0, t0, x0_, generator=torch.Generator().manual_seed(5))
    x2 = sampler.step(e1, t1, x1, generator=torch.Generator().manual_seed(7))
    z1, z2 = (torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in (5, 7))

    alpha, sigma = np.sqrt(ABAR), np.sqrt(1 - ABAR)
    lam = np.log(alpha / sigma)
    d_prev = (x0_ - sigma[t0] * e0) / alpha[t0]
    h0 = lam[t1] - lam[t0]
    first = (sigma[t1] / sigma[t0] * np.exp(-h0) * x0_ + alpha[t1] * (1 - np.exp(-2 * h0)) * d_prev
             + sigma[t1] * np.sqrt(1 - np.exp(-2 * h0)) * z1)
    torch.testing.assert_close(x1, first, rtol=1e-10, atol=1e-10)
    d_t = (x1 - sigma[t1] * e1) / alpha[t1]
    h, r = lam[t2] - lam[t1], (lam[t1] - lam[t0]) / (lam[t2] - lam[t1])
    D = (1 + 1 / (2 * r)) * d_t - 1 / (2 * r) * d_prev
    expected = (sigma[t2] / sigma[t1] * np.exp(-h) * x1 + alpha[t2] * (1 - np.exp(-2 * h)) * D
                + sigma[t2] * np.sqrt(1 - np.exp(-2 * h)) * z2)
    torch.testing.assert_close(x2, expected, rtol=1e-10, atol=1e-10)


def test_dpm_solver_converges_at_second_order():
    """Error of the state before the final (first-order) step shrinks ~4x per doubling (DDIM: ~2x)."""
    z = torch.randn(500, 1, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    standardised = (exact_ode_solution(z, T - 1) - MU) / S
    model_fn = gaussian_denoiser()

    def penultimate_error(sampler, n: int) -> float:
        sampler.set_timesteps(n)
        x = z
        for t in sampler.timesteps[:-1].tolist():
            x = sampler.step(model_fn(x, torch.full((z.shape[0],), t)), t, x)
        ab = ABAR[sampler.timesteps[-1].item()]
        return rms(x - (math.sqrt(ab) * MU + math.sqrt(ab * S**2 + 1 - ab) * standardised))

    schedule = DiffusionSchedule()
    dpm = [penultimate_error(DPMSolverPPSampler(schedule), n) for n in (80, 160)]
    ddim = [penultimate_error(DDIMSampler(schedule), n) for n in (80, 160)]
    assert dpm[0] / dpm[1] > 2.8 and 1.7 < ddim[0] / ddim[1] < 2.3
    assert dpm[1] < ddim[1] / 10


def test_sample_options():
    sampler = DDIMSampler(DiffusionSchedule())
    x = sample(gaussian_denoiser(), [6, 2, 3], sampler, 3, dtype=torch.float64, progress=True)
    assert x.shape == (6, 2, 3) and x.dtype == torch.float64
    assert isinstance(make_sampler("DPM++", DiffusionSchedule()), DPMSolverPPSampler)
    assert isinstance(make_sampler("ddpm", DiffusionSchedule()), DDPMSampler)


# --- argument validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"kind": "quadratic"}, "kind"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
    ],
)
def test_invalid_schedule_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)


def test_invalid_arguments():
    schedule = DiffusionSchedule()
    x = torch.zeros(2, 1, 3)
    for t in (torch.tensor([0, T]), torch.tensor([-1, 0]), T):
        with pytest.raises(ValueError, match=r"\[0, 999\]"):
            schedule.add_noise(x, x, t)
    with pytest.raises(ValueError, match="integer"):
        schedule.add_noise(x, x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        schedule.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="same shape"):
        schedule.predict_x0_eps(torch.zeros(2, 1, 4), x, 3)
    for n in (0, T + 1, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            DDIMSampler(schedule).set_timesteps(n)
    with pytest.raises(ValueError, match="spacing"):
        DDIMSampler(schedule, spacing="uniform")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(schedule, eta=1.5)
    with pytest.raises(ValueError, match="eta"):
        DPMSolverPPSampler(schedule, eta=-0.1)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", schedule)
    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="not one of the 10 timesteps"):
        sampler.step(x, 500, x)
    with pytest.raises(ValueError, match="initial_noise"):
        sample(gaussian_denoiser(), (2, 1, 3), sampler, 10, initial_noise=torch.zeros(2, 1, 4))
