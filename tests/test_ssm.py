"""Tests for the S4 layers in :mod:`ldns_fast.ssm`, each against an independent computation.

Oracles: dense float64 state-space recurrences (powers of the discretised state matrix), a Van Loan
matrix exponential for ZOH, Gauss-Legendre quadrature of the continuous impulse response, and direct
O(L^2) convolution sums (float64 FFT convolution, itself checked against them, for the longest sequences).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import rel_err

import ldns_fast.ssm.diagonal as diagonal_module
import ldns_fast.ssm.fftconv as fftconv
import ldns_fast.ssm.s4 as s4_module
from ldns_fast.ssm import (
    KERNEL_CACHE_SIZE,
    S4,
    DiagonalFormError,
    DiagonalKernel,
    DPLRKernel,
    chunk_tables,
    chunked_conv,
    diagonal_form,
    direct_conv,
    fft_conv,
    hippo_legs,
    hippo_legs_dplr,
    kernel_spectrum,
    spectrum_conv,
)
from ldns_fast.ssm.chunked import CHUNK, chunk_plan
from ldns_fast.ssm.ssm_kernels import conjugate_pair_power

DPLR_LENGTHS = [1, 2, 7, 16, 33, 64, 100]


def full_pairs(x: torch.Tensor) -> torch.Tensor:
    """``[..., Np]`` -> ``[..., 2 Np]`` conjugate-pair completion ``[x, conj x]``."""
    return torch.cat([x, x.conj()], dim=-1)


def impulse_response(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K[k, h, l] = C[k, h] dA[h]^l dB[h]`` by running the recurrence; dA ``[H, N, N]``, dB ``[H, N]``,
    C ``[n_kernels, H, N]`` -> complex ``[n_kernels, H, L]``."""
    out, x = [], dB
    for _ in range(L):
        out.append((C * x).sum(-1))
        x = torch.einsum("hij,hj->hi", dA, x)
    return torch.stack(out, dim=-1)


def perturb_(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Give every channel its own state parameters (the HiPPO init repeats them across channels)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


# ---------------------------------------------------------------------------------------------- HiPPO


def test_hippo_legs_matches_definition() -> None:
    N = 6
    A, P, B = hippo_legs(N)
    for n in range(N):
        assert B[n] == pytest.approx(np.sqrt(2 * n + 1))
        assert P[n] == pytest.approx(np.sqrt(n + 0.5))
        for k in range(N):
            expected = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k] == pytest.approx(expected)


def dplr_full_system(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Lambda, P, B = hippo_legs_dplr(N)
    Pf = full_pairs(P)
    return torch.diag(full_pairs(Lambda)) - torch.outer(Pf, Pf.conj()), Pf, full_pairs(B)


def test_hippo_dplr_eigenvalues_match_legs() -> None:
    N = 8
    Lambda, _, _ = hippo_legs_dplr(N)
    assert Lambda.dtype == torch.complex128 and Lambda.shape == (N // 2,)
    assert torch.all(Lambda.real == -0.5) and torch.all(Lambda.imag > 0)
    A_full, _, _ = dplr_full_system(N)
    A, _, _ = hippo_legs(N)
    eig_dplr = torch.linalg.eigvals(A_full)
    eig_legs = torch.linalg.eigvals(A)  # triangular: exactly -1 .. -N
    assert eig_dplr.imag.abs().max() < 1e-8
    assert torch.allclose(eig_dplr.real.sort().values, eig_legs.real.sort().values, atol=1e-8)


@pytest.mark.parametrize("N", [8, 16, 64])
def test_hippo_dplr_is_unitarily_similar_to_legs(N: int) -> None:
    """``x^H A^k y`` for ``x, y`` in {B, P} is invariant under the unitary change of basis."""
    A, P, B = hippo_legs(N)
    A_full, P_full, B_full = dplr_full_system(N)
    for k in range(6):
        Ak, Ak_full = torch.linalg.matrix_power(A, k), torch.linalg.matrix_power(A_full, k)
        for x, y, x_full, y_full in [(B, B, B_full, B_full), (P, B, P_full, B_full), (P, P, P_full, P_full)]:
            ref = x @ Ak @ y
            got = x_full.conj() @ Ak_full @ y_full
            assert abs(got - ref) <= 1e-10 * abs(ref), (k, got, ref)


# -------------------------------------------------------------------------------------------- DPLR S4


def dplr_oracle(kernel: DPLRKernel, L: int) -> torch.Tensor:
    """Real ``[n_kernels, H, L]`` from powers of the dense bilinear-discretised full system (float64)."""
    dt = kernel.dt().double()[:, None, None]
    Lambda, P = kernel.A().cdouble(), kernel.P_complex().cdouble()
    B, C = kernel.B_complex().cdouble(), kernel.C_complex().cdouble()
    Pf = full_pairs(P)
    A = torch.diag_embed(full_pairs(Lambda)) - Pf[:, :, None] * Pf.conj()[:, None, :]
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    inv = torch.linalg.inv(eye - dt / 2 * A)
    dA = inv @ (eye + dt / 2 * A)
    dB = (inv @ (dt * full_pairs(B)[..., None]))[..., 0]
    K = impulse_response(dA, dB, full_pairs(C), L)
    assert K.imag.abs().max() <= 1e-10 * K.abs().max()
    return K.real


@pytest.mark.parametrize("L", DPLR_LENGTHS)
@pytest.mark.parametrize("H, N, bidirectional, dt_max", [(3, 16, False, 0.1), (2, 8, True, 1.0)])
def test_dplr_kernel_matches_state_space_powers(L: int, H: int, N: int, bidirectional: bool, dt_max: float) -> None:
    torch.manual_seed(L)
    kernel32 = DPLRKernel(H, N, bidirectional=bidirectional, dt_min=1e-3, dt_max=dt_max, backend="torch")
    perturb_(kernel32)
    kernel64 = DPLRKernel(H, N, bidirectional=bidirectional, backend="torch").double()
    kernel64.load_state_dict(kernel32.state_dict())
    ref = dplr_oracle(kernel64, L)
    K64 = kernel64(L)
    assert K64.shape == (2 if bidirectional else 1, H, L) and K64.dtype == torch.float64
    assert rel_err(K64, ref) < 1e-8
    K32 = kernel32(L)
    assert K32.dtype == torch.float32
    assert rel_err(K32.double(), ref) < 1e-4


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dplr_kernel_gradients_match_state_space_powers(bidirectional: bool) -> None:
    """Every parameter's gradient through the kernel equals autograd through :func:`dplr_oracle` (float64, a
    random upstream gradient, L = 37 so the Nyquist bin is absent; tolerance 1e-8)."""
    torch.manual_seed(5)
    kernel = DPLRKernel(2, 8, bidirectional=bidirectional, dt_max=0.5, backend="torch").double()
    perturb_(kernel)
    L = 37
    upstream = torch.randn(kernel.n_kernels, 2, L, dtype=torch.float64)
    params = list(kernel.parameters())
    ours = torch.autograd.grad((kernel(L) * upstream).sum(), params)
    expected = torch.autograd.grad((dplr_oracle(kernel, L) * upstream).sum(), params)
    for p, a, b in zip(params, ours, expected):
        assert rel_err(a, b) < 1e-8, p.shape


@pytest.mark.parametrize("L", [0, 1, 2, 7, 15, 16, 17, 64, 255, 256, 257, 1057, 2049])
def test_conjugate_pair_power_matches_complex_matrix_power(L: int) -> None:
    """The factored then dense real-form power equals ``[c, conj c] M^L`` for a random ``M = diag([delta,
    conj delta]) + [a, conj a]^T [b, conj b]`` (the DPLR ``dA``'s form), forward and gradients (float64, against
    complex autograd through the dense M and ``torch.linalg.matrix_power``; M scaled to spectral radius 0.999
    so long powers stay finite; tolerance 1e-9). The lengths cover no squaring (L < 16), factored squarings
    only, factored then dense ones (L >= 256), and remainders that use both kinds of level (1,057)."""
    g = torch.Generator().manual_seed(L)
    Np = 3

    def rand(*shape: int) -> torch.Tensor:
        return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                             torch.randn(*shape, generator=g, dtype=torch.float64))

    def dense(delta, a, b):
        return torch.diag_embed(full_pairs(delta)) + full_pairs(a)[..., :, None] * full_pairs(b)[..., None, :]

    delta, a, b, c = rand(2, Np), rand(2, Np), rand(2, Np), rand(2, 2, Np)  # H = 2, two rows of c
    radius = torch.linalg.eigvals(dense(delta, a, b)).abs().amax(-1, keepdim=True)
    scale = 0.999 / radius  # M(s delta, s a, b) = s M
    delta, a = delta * scale, a * scale

    def reference(delta, a, b, c):
        return (full_pairs(c).unsqueeze(-2) @ torch.linalg.matrix_power(dense(delta, a, b), L)).squeeze(-2)[..., :Np]

    inputs = [t.requires_grad_() for t in (delta, a, b, c)]
    upstream = rand(2, 2, Np)
    expected, out = reference(*inputs), conjugate_pair_power(inputs[3], *inputs[:3], L)
    assert rel_err(out, expected) < 1e-9
    for x, y in zip(torch.autograd.grad(out, inputs, upstream, allow_unused=True, materialize_grads=True),
                    torch.autograd.grad(expected, inputs, upstream, allow_unused=True, materialize_grads=True)):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def test_dplr_state_parts_match_the_dense_bilinear_matrix() -> None:
    """``discrete_state_parts`` gives ``dA = (I - dt/2 A)^{-1} (I + dt/2 A)`` with ``A = diag(Lambda_full) -
    P_full P_full^H``, computed densely by ``torch.linalg.solve`` (float64, tolerance 1e-12)."""
    torch.manual_seed(3)
    kernel = DPLRKernel(3, 8).double()
    with torch.no_grad():
        kernel.P.normal_()
        kernel.log_dt.uniform_(math.log(1e-3), math.log(0.5))
    Lambda, P_full = kernel.A(), full_pairs(kernel.P_complex())
    A = torch.diag_embed(full_pairs(Lambda)) - P_full[..., :, None] * P_full.conj()[..., None, :]
    h = (kernel.dt() / 2)[:, None, None]
    eye = torch.eye(8, dtype=A.dtype)
    expected = torch.linalg.solve(eye - h * A, eye + h * A)
    with torch.no_grad():
        assert rel_err(kernel.discrete_state_matrix(), expected) < 1e-12


def test_dplr_does_not_mutate_parameters() -> None:
    torch.manual_seed(0)
    kernel = DPLRKernel(2, 8, backend="torch")
    before = {k: v.clone() for k, v in kernel.state_dict().items()}
    first = kernel(16)
    kernel(33)
    second = kernel(16)
    assert torch.equal(first, second)
    for name, value in kernel.state_dict().items():
        assert torch.equal(value, before[name]), name


# ---------------------------------------------------------------------------------------------- S4D


def diagonal_parameters(kernel: DiagonalKernel) -> tuple[torch.Tensor, ...]:
    """``(dt [H], A [H, Np], B [H, Np], C [n_kernels, H, Np])`` in float64/complex128."""
    return (
        kernel.dt().double(),
        kernel.A().cdouble(),
        kernel.B_complex().cdouble(),
        kernel.C_complex().cdouble(),
    )


def diagonal_oracle(kernel: DiagonalKernel, L: int) -> torch.Tensor:
    """Recurrence on the dense discretised system: ZOH by a Van Loan matrix exponential
    ``exp(dt [[A, B], [0, 0]]) = [[dA, dB], [0, 1]]``, bilinear by a dense inverse."""
    dt, A, B, C = diagonal_parameters(kernel)
    H, Np = A.shape
    A_dense = torch.diag_embed(A)
    if kernel.disc == "zoh":
        block = torch.zeros(H, Np + 1, Np + 1, dtype=A.dtype)
        block[:, :Np, :Np] = A_dense
        block[:, :Np, Np] = B
        expo = torch.linalg.matrix_exp(dt[:, None, None] * block)
        dA, dB = expo[:, :Np, :Np], expo[:, :Np, Np]
    else:
        eye = torch.eye(Np, dtype=A.dtype)
        inv = torch.linalg.inv(eye - dt[:, None, None] / 2 * A_dense)
        dA = inv @ (eye + dt[:, None, None] / 2 * A_dense)
        dB = (inv @ (dt[:, None, None] * B[..., None]))[..., 0]
    return 2 * impulse_response(dA, dB, C, L).real


def zoh_quadrature(kernel: DiagonalKernel, L: int, nodes: int = 24) -> torch.Tensor:
    """ZOH kernel as the integral of the continuous impulse response over each step:
    ``K[l] = int_0^dt 2 Re(C exp(A (l dt + s)) B) ds`` (Gauss-Legendre)."""
    dt, A, B, C = diagonal_parameters(kernel)
    x, w = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(nodes))
    s = (x + 1) / 2 * dt[:, None]  # [H, Q]
    weights = w * dt[:, None] / 2  # [H, Q]
    t = torch.arange(L, dtype=torch.float64)[:, None, None] * dt[None, :, None] + s[None]  # [L, H, Q]
    response = torch.einsum("khn,hn,lhqn->khlq", C, B, torch.exp(A[None, :, None, :] * t[..., None]))
    return 2 * (response.real * weights[None, :, None, :]).sum(-1)


def bilinear_closed_form(kernel: DiagonalKernel, L: int) -> torch.Tensor:
    """``K[l] = 2 Re(sum_n C B dt / (1 - dt A / 2) * ((1 + dt A / 2) / (1 - dt A / 2))^l)`` by integer powers."""
    dt, A, B, C = diagonal_parameters(kernel)
    half = dt[:, None] * A / 2
    ratio = (1 + half) / (1 - half)
    powers = torch.stack([ratio**l for l in range(L)], dim=-1)  # [H, Np, L]
    return 2 * torch.einsum("khn,hnl->khl", C * B * dt[:, None] / (1 - half), powers).real


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "lin"])
@pytest.mark.parametrize("L", [1, 37, 64])
def test_diagonal_kernel_matches_recurrence(disc: str, init: str, L: int) -> None:
    torch.manual_seed(1)
    kernel = DiagonalKernel(3, 16, init=init, disc=disc, bidirectional=True, backend="torch").double()
    perturb_(kernel)
    K = kernel(L)
    assert K.shape == (2, 3, L) and K.dtype == torch.float64
    assert rel_err(K, diagonal_oracle(kernel, L)) < 1e-10


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_diagonal_kernel_matches_closed_form(disc: str) -> None:
    torch.manual_seed(2)
    L = 50
    kernel = DiagonalKernel(2, 8, init="lin", disc=disc, dt_min=1e-2, dt_max=0.2, backend="torch").double()
    closed = zoh_quadrature(kernel, L) if disc == "zoh" else bilinear_closed_form(kernel, L)
    assert rel_err(kernel(L), closed) < 1e-10
    kernel32 = DiagonalKernel(2, 8, init="lin", disc=disc, backend="torch")
    kernel32.load_state_dict(kernel.state_dict())
    assert rel_err(kernel32(L).double(), closed) < 1e-5


def test_dplr_without_low_rank_term_equals_diagonal_bilinear() -> None:
    torch.manual_seed(3)
    dplr = DPLRKernel(3, 8, bidirectional=True, backend="torch").double()
    perturb_(dplr)
    with torch.no_grad():
        dplr.P.zero_()
    diag = DiagonalKernel(3, 8, disc="bilinear", bidirectional=True, backend="torch").double()
    diag.load_state_dict({k: v for k, v in dplr.state_dict().items() if k != "P"})
    for L in (9, 32):
        assert rel_err(dplr(L), diag(L)) < 1e-10


# ------------------------------------------------------------------------------------------- FFT conv


def loop_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """``y[t] = sum_{j<=t} k0[j] u[t-j] + sum_{m>=1} k1[m-1] u[t+m] + D u[t]`` by explicit loops."""
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        for j in range(t + 1):
            y[..., t] += k[0, :, j] * u[..., t - j]
        if k.shape[0] == 2:
            for m in range(1, L - t):
                y[..., t] += k[1, :, m - 1] * u[..., t + m]
    return y if D is None else y + D[:, None] * u


@pytest.mark.parametrize("n_kernels", [1, 2])
@pytest.mark.parametrize("L", [1, 13, 16])
@pytest.mark.parametrize("with_D", [True, False])
@pytest.mark.parametrize("conv", [fft_conv, direct_conv])
def test_convolutions_match_the_loop_sum(n_kernels: int, L: int, with_D: bool, conv) -> None:
    torch.manual_seed(4)
    u = torch.randn(2, 3, L, dtype=torch.float64)
    k = torch.randn(n_kernels, 3, L, dtype=torch.float64)
    D = torch.randn(3, dtype=torch.float64) if with_D else None
    y = conv(u, k, D)
    assert y.shape == u.shape
    assert torch.allclose(y, loop_conv(u, k, D), atol=1e-12)


@pytest.mark.parametrize("n_kernels", [1, 2])
@pytest.mark.parametrize("L", [1, 13, 16])
@pytest.mark.parametrize("with_D", [True, False])
@pytest.mark.parametrize("chunk_bytes,n_parts", [(None, 1), (1, 5), ("3 trials", 3)],
                         ids=["one-pass", "per-trial", "uneven-chunks"])
def test_fft_conv_gradients_match_the_toeplitz_product(monkeypatch, n_kernels: int, L: int, with_D: bool,
                                                       chunk_bytes, n_parts: int) -> None:
    """fft_conv (forward and its analytic backward in u, k and D, and in k and D alone) and spectrum_conv equal the
    Toeplitz matrix product and autograd through it, in one pass over the batch and in batch chunks of 1 and of 2, 2, 1 trials
    (float64, random upstream gradient; tolerance 1e-12)."""
    torch.manual_seed(L + 10 * n_kernels)
    B, H = 5, 3
    if chunk_bytes == "3 trials":  # 3 parts of ceil(5 / 3) = 2 trials
        chunk_bytes = 5 * H * (L + 1) * 2 * 8 // 3 + 1
    if chunk_bytes is not None:
        monkeypatch.setattr(fftconv, "BATCH_PART_BYTES", chunk_bytes)
    u = torch.randn(B, H, L, dtype=torch.float64, requires_grad=True)
    assert len(fftconv.batch_parts(u)) == n_parts
    k = torch.randn(n_kernels, H, L, dtype=torch.float64, requires_grad=True)
    D = torch.randn(H, dtype=torch.float64, requires_grad=True) if with_D else None
    inputs = [u, k] + ([D] if with_D else [])
    upstream = torch.randn(B, H, L, dtype=torch.float64)
    y, expected_y = fft_conv(u, k, D), direct_conv(u, k, D)
    assert torch.allclose(y, expected_y, rtol=0, atol=1e-12)
    assert torch.allclose(spectrum_conv(u, kernel_spectrum(k), D), expected_y, rtol=0, atol=1e-12)
    ours = torch.autograd.grad(y, inputs, upstream)
    expected = torch.autograd.grad(expected_y, inputs, upstream)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-12)
    kernel_only = torch.autograd.grad(fft_conv(u.detach(), k, D), inputs[1:], upstream)  # the backward without du
    for a, b in zip(kernel_only, expected[1:]):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "u_shape, k_shape, D_shape, name",
    [
        ((3, 4), (1, 3, 4), None, "u"),
        ((2, 3, 4), (1, 3, 5), None, "k"),
        ((2, 3, 4), (3, 3, 4), None, "k"),
        ((2, 3, 4), (1, 2, 4), None, "k"),
        ((2, 3, 4), (1, 3, 4), (4,), "D"),
    ],
)
@pytest.mark.parametrize("conv", [fft_conv, direct_conv])
def test_convolutions_reject_bad_shapes(u_shape, k_shape, D_shape, name: str, conv) -> None:
    D = None if D_shape is None else torch.randn(D_shape)
    with pytest.raises(ValueError, match=rf"^{name} must"):
        conv(torch.randn(u_shape), torch.randn(k_shape), D)


# --------------------------------------------------------------------------------- chunked-scan conv

# Shorter than a chunk, odd, prime (127, 257, 2003), chunk multiples and one past them.
CHUNK_LENGTHS = [1, 2, 7, 127, 128, 129, 256, 257, 1000, 2003]


def conv_layer(mode: str, bidirectional: bool, H: int = 3, N: int = 8, slow_channel: bool = False) -> S4:
    """A float32 layer with perturbed parameters; ``slow_channel``: channel 0 gets ``dt = 1e-4``, so its
    modes decay over about 10^4 bins (the state is carried across many chunks and scan levels)."""
    torch.manual_seed(21)
    layer = S4(H, N, mode=mode, bidirectional=bidirectional, backend="torch")
    perturb_(layer)
    if slow_channel:
        with torch.no_grad():
            layer.kernel.log_dt[0] = math.log(1e-4)
    return layer


def kernel64(layer: S4, L: int) -> torch.Tensor:
    """The layer's own kernel ``[n_kernels, H, L]`` in float64 (its Vandermonde / Cauchy computation)."""
    with torch.no_grad():
        return copy.deepcopy(layer).double().kernel(L)


@pytest.mark.parametrize("mode", ["diag", "dplr"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("chunk", [CHUNK, 4])
def test_chunked_conv_matches_float64_direct_convolution(mode: str, bidirectional: bool, chunk: int) -> None:
    layer = conv_layer(mode, bidirectional)
    form = diagonal_form(layer.kernel)
    D = layer.D.detach().double()
    tables64 = chunk_tables(form, chunk=chunk, dtype=torch.float64)
    tables32 = chunk_tables(form, chunk=chunk)
    gen = torch.Generator().manual_seed(1)
    for L in CHUNK_LENGTHS:  # chunks of 4 bins: up to 500 chunks, 8 scan levels
        u = torch.randn(2, 3, L, dtype=torch.float64, generator=gen)
        # The algorithm is exact: float64 operands reproduce the direct sum of the diagonal form's kernel.
        got = chunked_conv(u, tables64, D)
        assert rel_err(got, direct_conv(u, form.kernel(L), D)) < 1e-11, L
        # float32, against the layer's own kernel (the diagonal form of a DPLR kernel is exact to 1e-6).
        y = chunked_conv(u.float(), tables32, D.float())
        assert y.dtype == torch.float32 and rel_err(y.double(), direct_conv(u, kernel64(layer, L), D)) < 1e-5, L


@pytest.mark.parametrize("mode", ["diag", "dplr"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_chunked_conv_is_exact_on_long_sequences(mode: str, bidirectional: bool) -> None:
    layer = conv_layer(mode, bidirectional, H=2, N=4, slow_channel=True)
    tables = chunk_tables(diagonal_form(layer.kernel))
    D = layer.D.detach()
    gen = torch.Generator().manual_seed(2)
    for L in (19_997, 20_000):
        u = torch.randn(1, 2, L, dtype=torch.float64, generator=gen)
        k = kernel64(layer, L)
        want = fft_conv(u, k, D.double())
        got = chunked_conv(u.float(), tables, D)
        assert rel_err(got.double(), want) < 1e-5, L
        assert rel_err(got[:, 0].double(), want[:, 0]) < 1e-5, L  # the slowly decaying channel alone
        assert rel_err(fft_conv(u.float(), k.float(), D).double(), want) < 1e-4  # float32 FFT: same class


def test_chunked_layer_on_a_padded_batch_of_variable_lengths() -> None:
    layer = conv_layer("diag", bidirectional=True, H=4)
    chunked, fft = copy.deepcopy(layer), copy.deepcopy(layer)
    chunked.conv, fft.conv = "chunked", "fft"
    lengths = [1, 129, 700, 2051]
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(len(lengths), 4, max(lengths), generator=gen)
    mask = torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]
    u = u * mask[:, None]  # zero past each length, as the models feed S4 layers
    with torch.no_grad():
        y, y_fft = chunked(u), fft(u)
        assert rel_err(y, y_fft) < 1e-5
        for i, L in enumerate(lengths):  # each trial alone, at its own length (its own chunking)
            assert rel_err(y[i, :, :L], chunked(u[i : i + 1, :, :L])[0]) < 1e-5, L


def fft_output(layer: S4, u: torch.Tensor) -> torch.Tensor:
    """The layer's output by the FFT convolution (a copy with ``conv="fft"``, no gradient)."""
    reference = copy.deepcopy(layer)
    reference.conv = "fft"
    with torch.no_grad():
        return reference(u)


@pytest.mark.parametrize("mode", ["diag", "dplr"])
def test_s4_chunked_conv_is_inference_only(mode: str) -> None:
    layer = conv_layer(mode, bidirectional=True)
    layer.conv = "chunked"
    u = torch.randn(2, 3, 300, requires_grad=True)
    with torch.no_grad():
        y = layer(u)
    assert rel_err(y, fft_output(layer, u)) < 1e-5
    with pytest.raises(ValueError, match="conv='chunked' is for inference"):
        layer(u)
    layer.kernel.requires_grad_(False)  # frozen kernel: the chunked scan, with gradients for the input and D
    z = layer(u)
    torch.testing.assert_close(z, y, rtol=0, atol=0)
    weights = torch.randn_like(z)
    (z * weights).sum().backward()
    u64 = u.detach().double().requires_grad_()
    (fft_conv(u64, kernel64(layer, 300), layer.D.detach().double()) * weights).sum().backward()
    assert rel_err(u.grad.double(), u64.grad) < 1e-5
    torch.testing.assert_close(layer.D.grad, (weights * u).sum((0, 2)).detach())


def test_chunked_operands_are_cached_per_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = conv_layer("dplr", bidirectional=True)
    layer.conv = "chunked"
    forms: list[int] = []
    original = s4_module.diagonal_form
    monkeypatch.setattr(s4_module, "diagonal_form", lambda kernel: forms.append(1) or original(kernel))
    u = torch.randn(2, 3, 500)
    with torch.no_grad():
        before = layer(u)
        layer(u[..., :77])  # any length: the same operands
        assert len(forms) == 1
        layer.kernel.log_dt.add_(0.1)
        after = layer(u)
    assert len(forms) == 2 and not torch.allclose(after, before)
    assert rel_err(after, fft_output(layer, u)) < 1e-5


def test_chunked_conv_rejects_bad_arguments() -> None:
    form = diagonal_form(conv_layer("diag", bidirectional=False).kernel)
    tables = chunk_tables(form, chunk=4)
    with pytest.raises(ValueError, match=r"u must be a tensor of shape \[B, H=3, L\]"):
        chunked_conv(torch.randn(2, 4, 10), tables)
    plan = chunk_plan(tables, 20, steps=2)  # 5 chunks of 4 bins: 4 states, two scan levels
    with pytest.raises(ValueError, match=r"36 bins need 3 scan steps; this chunk plan has 2 \(up to 35 bins\)"):
        chunked_conv(torch.randn(1, 3, 36), tables, plan=chunk_plan(tables, 36, steps=2))
    with pytest.raises(ValueError, match="a chunk plan for 20 bins does not fit a sequence of 9 bins"):
        chunked_conv(torch.randn(1, 3, 9), tables, plan=plan)  # 9 bins: 2 chunks of 5 bins, not 5 of 4
    assert chunked_conv(torch.randn(1, 3, 20), tables, plan=plan).shape == (1, 3, 20)
    for bad in (dict(chunk=0), dict(chunk=True)):
        with pytest.raises(ValueError, match="chunk must be an integer"):
            chunk_tables(form, **bad)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="steps must be an integer"):
            chunk_plan(tables, 16, steps=bad)
    with pytest.raises(ValueError, match="conv must be one of"):
        S4(3, 8, conv="wavelet")


def test_diagonal_form_refuses_an_inexact_decomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = S4(4, 8, mode="dplr", bidirectional=True, backend="torch")
    assert diagonal_form(layer.kernel).w.shape == (2, 4, 8)  # all N eigenvalues of the full system
    monkeypatch.setattr(diagonal_module, "DIAGONAL_FORM_TOLERANCE", 0.0)
    with pytest.raises(DiagonalFormError, match="too ill-conditioned"):
        diagonal_form(layer.kernel)


# ------------------------------------------------------------------------------------------- S4 layer

LAYER_CONFIGS = [
    dict(mode="dplr"),
    dict(mode="diag", disc="zoh", init="legs"),
    dict(mode="diag", disc="bilinear", init="lin"),
]


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_s4_causal_output_ignores_future(config: dict) -> None:
    torch.manual_seed(5)
    layer = S4(4, 16, backend="torch", **config).double()
    u = torch.randn(2, 4, 40, dtype=torch.float64)
    changed = u.clone()
    t = 17
    changed[..., t + 1 :] = torch.randn_like(changed[..., t + 1 :])
    y, y_changed = layer(u), layer(changed)
    assert torch.allclose(y[..., : t + 1], y_changed[..., : t + 1], atol=1e-12, rtol=0)
    assert not torch.allclose(y[..., t + 1 :], y_changed[..., t + 1 :])


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_s4_bidirectional_output_sees_future(config: dict) -> None:
    torch.manual_seed(6)
    layer = S4(4, 16, bidirectional=True, backend="torch", **config).double()
    u = torch.randn(2, 4, 40, dtype=torch.float64)
    changed = u.clone()
    changed[..., 30:] += 1.0
    y, y_changed = layer(u), layer(changed)
    assert (y[..., :30] - y_changed[..., :30]).abs().max() > 1e-6


@pytest.mark.parametrize("config", LAYER_CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_s4_gradients_reach_every_parameter(config: dict, bidirectional: bool) -> None:
    torch.manual_seed(7)
    layer = S4(4, 8, bidirectional=bidirectional, backend="torch", **config)
    u = torch.randn(2, 4, 24)
    (layer(u) ** 2).mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


# ----------------------------------------------------------------------------------------- kernel cache


def count_kernel_calls(layer: S4, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ``layer.kernel.forward`` so each kernel computation appends its length to the returned list."""
    calls: list[int] = []
    original = layer.kernel.forward

    def counted(L: int) -> torch.Tensor:
        calls.append(L)
        return original(L)

    monkeypatch.setattr(layer.kernel, "forward", counted)
    return calls


def fresh_output(layer: S4, u: torch.Tensor) -> torch.Tensor:
    """The layer's output with grad enabled (the cache is never used then)."""
    with torch.enable_grad():
        return layer(u).detach()


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_cache_reused_under_no_grad_only(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(8)
    layer = S4(4, 8, mode=mode, backend="torch")
    calls = count_kernel_calls(layer, monkeypatch)
    u = torch.randn(2, 4, 20)
    with torch.no_grad():
        y1, y2 = layer(u), layer(u)
        layer(torch.randn(1, 4, 11))
        layer(torch.randn(3, 4, 20))
    assert calls == [20, 11]
    assert torch.equal(y1, y2)
    y3 = layer(u)
    layer(u)  # grad on: computes the kernel again, fills no cache
    assert calls == [20, 11, 20, 20]
    assert y3.requires_grad and torch.allclose(y3, y1)
    layer.clear_kernel_cache()
    with torch.no_grad():
        layer(u)
    assert calls == [20, 11, 20, 20, 20]


def test_cache_is_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(9)
    layer = S4(2, 4, mode="diag", backend="torch")
    calls = count_kernel_calls(layer, monkeypatch)
    lengths = list(range(3, 3 + KERNEL_CACHE_SIZE + 1))
    with torch.no_grad():
        for L in lengths:
            layer(torch.randn(1, 2, L))
        layer(torch.randn(1, 2, lengths[-1]))  # most recent: cached
        layer(torch.randn(1, 2, lengths[0]))  # evicted: recomputed
    assert calls == lengths + [lengths[0]]


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_cache_invalidated_by_in_place_parameter_edit(mode: str) -> None:
    torch.manual_seed(10)
    layer = S4(4, 8, mode=mode, backend="torch")
    u = torch.randn(2, 4, 20)
    for name, p in layer.kernel.named_parameters():
        with torch.no_grad():
            before = layer(u)
            p.add_(1e-2)
            after = layer(u)
        assert not torch.allclose(after, before), name
        assert torch.allclose(after, fresh_output(layer, u), rtol=1e-6, atol=1e-6), name


def test_cache_invalidated_by_load_state_dict_and_optimizer_step() -> None:
    torch.manual_seed(11)
    layer, other = S4(4, 8, backend="torch"), S4(4, 8, backend="torch")
    u = torch.randn(2, 4, 20)
    with torch.no_grad():
        layer(u)
        layer.load_state_dict(other.state_dict())
        assert torch.allclose(layer(u), fresh_output(other, u), rtol=1e-6, atol=1e-6)

    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with torch.no_grad():
        before = layer(u)
    layer(u).pow(2).mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = layer(u)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, fresh_output(layer, u), rtol=1e-6, atol=1e-6)


def test_cache_follows_dtype_conversion() -> None:
    torch.manual_seed(12)
    layer = S4(4, 8, backend="torch")
    u = torch.randn(2, 4, 20, dtype=torch.float64)
    with torch.no_grad():
        y32 = layer(u.float())
        layer.double()
        y64 = layer(u)
    assert y64.dtype == torch.float64
    assert torch.equal(y64, fresh_output(layer, u))
    assert torch.allclose(y64.float(), y32, rtol=1e-4, atol=1e-4)


def test_frozen_kernel_uses_cache_with_grad_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(13)
    layer = S4(4, 8, backend="torch")
    layer.kernel.requires_grad_(False)
    calls = count_kernel_calls(layer, monkeypatch)
    u = torch.randn(2, 4, 20, requires_grad=True)
    layer(u).sum().backward()
    layer(u).sum().backward()
    assert calls == [20]
    assert u.grad is not None and layer.D.grad is not None


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_cache_holds_the_kernel_spectrum_and_forward_takes_one(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(14)
    layer = S4(4, 8, mode=mode, backend="torch")
    perturb_(layer)
    calls = count_kernel_calls(layer, monkeypatch)
    u = torch.randn(2, 4, 20)
    with torch.no_grad():
        expected = kernel_spectrum(layer.kernel.forward(20))
    reference = fresh_output(layer, u)
    with torch.enable_grad():
        spectrum = layer.cached_spectrum(20)  # a value: no gradient history even with grad mode on
    assert not spectrum.requires_grad and spectrum.shape == (4, 21)
    torch.testing.assert_close(spectrum, expected, rtol=0, atol=0)
    with torch.no_grad():
        assert layer.cached_spectrum(20) is spectrum and layer(u) is not None
    assert calls == [20, 20, 20]  # `expected`, `reference`, then once filling the cache
    y = layer(u, spectrum)  # grad on, given spectrum: no kernel computed, gradient reaches D only
    assert calls == [20, 20, 20]
    torch.testing.assert_close(y, reference, rtol=1e-6, atol=1e-6)
    y.sum().backward()
    assert layer.D.grad is not None and all(p.grad is None for p in layer.kernel.parameters())
    with pytest.raises(ValueError, match=r"spectrum must be a complex tensor of shape \[H, L \+ 1\] = \[4, 21\]"):
        layer(u, layer.cached_spectrum(19))
    with pytest.raises(ValueError, match="spectrum must be a complex tensor"):
        layer(u, spectrum.real)


def test_s4_forward_on_valid_input_never_synchronises(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = S4(4, 8, mode="dplr", bidirectional=True, backend="torch")
    u = torch.randn(2, 4, 10)
    syncs: list[str] = []
    for name in ("item", "__bool__", "tolist"):  # every way a value reaches the host
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name: syncs.append(_n) or _f(self, *a))
    y = layer(u)  # training mode: the kernel is computed, with gradients
    with torch.no_grad():
        layer(u)  # inference: cached spectrum
    monkeypatch.undo()
    assert syncs == [] and y.shape == (2, 4, 10)
    bad = u.clone()
    bad[1, 2, 3] = float("nan")
    with torch.no_grad():  # values are the callers' to validate: a NaN flows through
        assert torch.isnan(layer(bad)).any()


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "u, message",
    [
        (torch.randn(2, 3, 10), "u must have shape"),
        (torch.randn(4, 10), "u must be"),
        (torch.randint(0, 3, (2, 4, 10)), "u must be"),
    ],
)
def test_s4_rejects_bad_input(u: torch.Tensor, message: str) -> None:
    layer = S4(4, 8, backend="torch")
    with pytest.raises(ValueError, match=message):
        layer(u)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="dplr", disc="zoh"),
        dict(mode="dplr", init="lin"),
        dict(mode="other"),
        dict(mode="diag", disc="euler"),
        dict(mode="diag", init="random"),
        dict(d_state=7),
        dict(dt_min=0.5, dt_max=0.1),
    ],
)
def test_s4_rejects_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        S4(4, **kwargs)
