"""Every kernel backend against the float64 naive formulas, forward and gradients.

Inputs are drawn fresh from a seeded generator in float32 precision (so float32 and float64 runs see the
same numbers); the oracle is ``kernels.reference`` evaluated in complex128 with torch autograd.
Tolerances (relative L2 error): float32 <= 1e-5 for L <= 1024, <= 1e-3 for longer L; float64 <= 1e-10.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_param, rel_err

from ldns_fast.kernels import (
    BACKENDS,
    BackendUnavailableError,
    cauchy_kernel,
    cauchy_naive,
    vandermonde_kernel,
    vandermonde_naive,
)
from ldns_fast.kernels import ops, torch_backend
from ldns_fast.kernels.api import NAIVE_MAX_ELEMENTS, resolve_backend


ALL = [backend_param(b) for b in BACKENDS]


def tolerance(L: int, dtype: torch.dtype) -> float:
    if dtype == torch.complex128:
        return 1e-10
    return 1e-5 if L <= 1024 else 1e-3


def ssm_inputs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v ~ CN(0, 1); poles with decay in [1e-3, 0.5] and frequency in [-3, 3] (float32-exact)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    decay = torch.empty(shape).uniform_(1e-3, 0.5, generator=g)
    freq = torch.empty(shape).uniform_(-3, 3, generator=g)
    return v.to(torch.complex128), torch.complex(-decay, freq).to(torch.complex128)


def bilinear_nodes(L: int) -> torch.Tensor:
    """The DPLR kernel's frequency nodes z_k = 2 (1 - w_k) / (1 + w_k) for k < L/2 (float32-exact)."""
    k = torch.arange((L + 1) // 2)
    return (2j * torch.tan(torch.pi * k / L)).to(torch.complex64).to(torch.complex128)


def check_grads(fn, ref_fn, inputs: list[torch.Tensor], dtype: torch.dtype, tol: float, seed: int) -> None:
    """Forward and gradient (random upstream) of ``fn`` on ``dtype`` vs ``ref_fn`` in float64."""
    ref_in = [t.clone().requires_grad_() for t in inputs]
    ref = ref_fn(*ref_in)
    g = torch.Generator().manual_seed(seed + 1)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    if ref.is_complex():
        upstream = torch.complex(upstream, torch.randn(ref.shape, generator=g, dtype=torch.float64))
    ref_grads = torch.autograd.grad(ref, ref_in, upstream)

    test_in = [t.to(dtype).requires_grad_() for t in inputs]
    out = fn(*test_in)
    assert out.dtype == (dtype if ref.is_complex() else dtype.to_real())
    assert torch.isfinite(torch.view_as_real(out) if out.is_complex() else out).all()
    grads = torch.autograd.grad(out, test_in, upstream.to(out.dtype))
    assert rel_err(out, ref) < tol, f"forward rel err {rel_err(out, ref):.2e} >= {tol}"
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert rel_err(a, b) < tol, f"grad {i} rel err {rel_err(a, b):.2e} >= {tol}"


VANDERMONDE_SHAPES = [(3, 4, 17), (5, 32, 300), (2, 32, 1024), (2, 16, 4099), (1, 32, 16384)]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("H,Np,L", VANDERMONDE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["f32", "f64"])
def test_vandermonde_matches_float64_reference(backend, H, Np, L, dtype):
    if backend == "keops" and dtype == torch.complex128 and L > 1024:
        pytest.skip("one float64 keops shape suffices (each dtype compiles its own formula)")
    seed = H * 1000 + L
    v, x = ssm_inputs((H, Np), seed)
    check_grads(
        lambda v, x: vandermonde_kernel(v, x, L, backend),
        lambda v, x: vandermonde_naive(v, x, L),
        [v, x], dtype, tolerance(L, dtype), seed,
    )


CAUCHY_SHAPES = [((3,), 4, 16), ((2, 3), 32, 301), ((4,), 40, 1000), ((2,), 32, 16384)]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("batch,Np,L", CAUCHY_SHAPES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["f32", "f64"])
def test_cauchy_matches_float64_reference(backend, batch, Np, L, dtype):
    if backend == "keops" and dtype == torch.complex128 and L > 1024:
        pytest.skip("one float64 keops shape suffices (each dtype compiles its own formula)")
    seed = Np * 1000 + L
    v, w = ssm_inputs((*batch, Np), seed)
    z = bilinear_nodes(L)
    check_grads(
        lambda v, w: cauchy_kernel(v, z.to(v.dtype), w, backend),
        lambda v, w: cauchy_naive(v, z, w),
        [v, w], dtype, tolerance(L, dtype), seed,
    )


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("v_batch,w_batch", [((4, 3), (3,)), ((2, 2, 3), (1, 3)), ((1, 3), (2, 1)), ((2, 3), (2, 3))],
                         ids=["shared", "shared-leading-one", "poles-vary-over-rows", "no-sharing"])
def test_cauchy_broadcasts_poles_over_numerators(backend, v_batch, w_batch):
    """Poles shared by several rows (v [4, H, Np], w [H, Np], as in the DPLR kernel's four Cauchy sums) and
    broadcasts where they are not shared."""
    v, _ = ssm_inputs((*v_batch, 8), seed=1)
    _, w = ssm_inputs((*w_batch, 8), seed=2)
    z = bilinear_nodes(64)
    check_grads(
        lambda v, w: cauchy_kernel(v, z.to(v.dtype), w, backend),
        lambda v, w: cauchy_naive(v, z, w),
        [v, w], torch.complex64, 1e-5, seed=3,
    )


def test_torch_cauchy_by_frequency_chunks_matches_float64(monkeypatch):
    """The torch path evaluates the frequencies in chunks, forward and backward; with chunks of 16 (forward)
    and 4 (backward) of the 50 frequencies, the last one partial, it still matches the float64 formula."""
    monkeypatch.setattr(torch_backend, "CAUCHY_CHUNK_ELEMENTS", 8 * 2 * 4 * 4)
    v, _ = ssm_inputs((3, 2, 4), seed=5)
    _, w = ssm_inputs((2, 4), seed=6)
    z = bilinear_nodes(100)
    check_grads(
        lambda v, w: cauchy_kernel(v, z.to(v.dtype), w, "torch"),
        lambda v, w: cauchy_naive(v, z, w),
        [v, w], torch.complex128, 1e-10, seed=7,
    )


@pytest.mark.parametrize("H,L,expected", [(2, 50, "naive"), (64, 140, "torch")])
def test_auto_backend_follows_the_cost_model_and_is_correct(monkeypatch, H, L, expected):
    """On CPU ``auto`` takes the naive formula for tiny problems (up to NAIVE_MAX_ELEMENTS terms) and the
    torch path above; the op really runs the chosen backend, and the result matches float64."""
    assert resolve_backend("auto", torch.device("cpu")) == "torch"  # the fused ops' choice
    called = []
    real = ops.implementation
    monkeypatch.setattr(ops, "implementation", lambda kind, backend, backward=False: (
        called.append((kind, backend)) or real(kind, backend, backward)))
    v, x = ssm_inputs((H, 8), seed=4)
    out = vandermonde_kernel(v.to(torch.complex64), x.to(torch.complex64), L)
    assert rel_err(out, vandermonde_naive(v, x, L)) < 1e-5
    z = bilinear_nodes(L)
    r = cauchy_kernel(v.to(torch.complex64)[None].expand(4, H, 8), z.to(torch.complex64), x.to(torch.complex64))
    assert rel_err(r, cauchy_naive(v[None].expand(4, H, 8), z, x)) < 1e-5
    assert called == [("vandermonde", expected), ("cauchy", expected)]
    assert resolve_backend("auto", torch.device("cpu"), terms=H * 8 * L) == expected
    big = (H * 8 * L > NAIVE_MAX_ELEMENTS, 4 * H * 8 * z.numel() > NAIVE_MAX_ELEMENTS)
    assert big == ((expected == "torch"),) * 2


def test_mixed_precision_inputs_promote_to_complex128():
    v, x = ssm_inputs((2, 4), seed=5)
    out = vandermonde_kernel(v.to(torch.complex64), x, 10, "torch")
    assert out.dtype == torch.float64


# ---------------------------------------------------------------- bad input


@pytest.fixture
def good():
    v, x = ssm_inputs((2, 4), seed=6)
    return v.to(torch.complex64), x.to(torch.complex64), bilinear_nodes(8).to(torch.complex64)


def test_real_tensor_where_complex_expected_names_argument(good):
    v, x, z = good
    with pytest.raises(ValueError, match=r"^x must be a complex tensor"):
        vandermonde_kernel(v, x.real, 8)
    with pytest.raises(ValueError, match=r"^v must be a complex tensor"):
        cauchy_kernel(v.real, z, x)
    with pytest.raises(ValueError, match=r"^z must be a complex tensor"):
        cauchy_kernel(v, z.real, x)
    with pytest.raises(ValueError, match=r"^v must be a complex torch.Tensor"):
        vandermonde_kernel([[1j]], x, 8)


def test_mismatched_shapes_name_arguments(good):
    v, x, z = good
    with pytest.raises(ValueError, match=r"x must have the shape of v"):
        vandermonde_kernel(v, x[:, :3], 8)
    with pytest.raises(ValueError, match=r"v must have shape \[H, Np\]"):
        vandermonde_kernel(v[0], x[0], 8)
    with pytest.raises(ValueError, match=r"share the state size Np"):
        cauchy_kernel(v, z, x[:, :3])
    with pytest.raises(ValueError, match=r"do not broadcast"):
        cauchy_kernel(v, z, torch.cat([x, x, x]))
    with pytest.raises(ValueError, match=r"z must have shape \[M\]"):
        cauchy_kernel(v, z[None], x)


@pytest.mark.parametrize("L", [0, -3, 2.5, True, "8"])
def test_non_positive_or_non_integer_length_rejected(good, L):
    v, x, _ = good
    with pytest.raises(ValueError, match=r"L must be a positive integer"):
        vandermonde_kernel(v, x, L)


def test_numpy_integer_length_accepted(good):
    v, x, _ = good
    torch.testing.assert_close(vandermonde_kernel(v, x, np.int64(8), backend="torch"),
                               vandermonde_kernel(v, x, 8, backend="torch"), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the overflow, in the Triton interpreter
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_state_and_degenerate_inputs_get_clear_errors(good, backend):
    v, x, z = good
    with pytest.raises(ValueError, match=r"the state size Np must be at least 1"):
        vandermonde_kernel(v[:, :0], x[:, :0], 8, backend=backend)
    with pytest.raises(ValueError, match=r"the state size Np must be at least 1"):
        cauchy_kernel(v[:, :0], z, x[:, :0], backend=backend)
    growing = torch.complex(torch.full_like(x.real, 0.5), x.imag)  # Re(x) > 0: exp(0.5 l) overflows float32
    assert torch.isfinite(vandermonde_kernel(v, growing, 8, backend=backend)).all()  # short: representable
    with pytest.raises(ValueError, match=r"the kernel overflows: max Re\(x\) \(L - 1\) = 500"):
        vandermonde_kernel(v, growing, 1001, backend=backend)
    on_pole = x.clone()
    on_pole[0, 1] = z[3]
    with pytest.raises(ValueError, match=r"a node z lies on \(or next to\) a pole"):
        cauchy_kernel(v, z, on_pole, backend=backend)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_rejected_naming_argument(good, bad):
    v, x, z = good
    x_bad = x.clone()
    x_bad[1, 2] = complex(bad, 0)
    with pytest.raises(ValueError, match=r"^x contains NaN"):
        vandermonde_kernel(v, x_bad, 8)
    with pytest.raises(ValueError, match=r"^w contains NaN"):
        cauchy_kernel(v, z, x_bad)


def test_unknown_and_unavailable_backends(good):
    v, x, _ = good
    with pytest.raises(ValueError, match=r"unknown kernel backend 'cuda'"):
        vandermonde_kernel(v, x, 8, backend="cuda")
    with pytest.raises(BackendUnavailableError, match=r"'triton' is unavailable on meta"):
        resolve_backend("triton", torch.device("meta"))
