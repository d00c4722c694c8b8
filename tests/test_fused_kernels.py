"""Fused denoiser-block ops (``kernels.fused``) on every backend, forward and gradients.

Oracle: the unfused formulas written out in float64 with torch autograd, on inputs drawn fresh from a
seeded generator and rounded to the tested dtype (so both sides see the same numbers); a random upstream
gradient. The Triton backend runs through the interpreter on CPU. Tolerances (relative L2 error):
float32 1e-5, float64 1e-12, float16 2e-3, bfloat16 1.5e-2 (a few units of the dtype's rounding).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_param, rel_err
from torch import nn

from ldns_fast.kernels import BackendUnavailableError, gelu_gate_residual, modulated_norm
from ldns_fast.kernels import triton_backend
from ldns_fast.models.layers import ChannelNorm, PointwiseMLP, apply_mask

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


BACKENDS = ["torch", backend_param("triton")]


def ref_modulated_norm(x, shift, scale, mask=None, eps=1e-5):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    h = (x - mean) / torch.sqrt(var + eps) * (1 + scale) + shift
    return h if mask is None else h * mask[:, None, :].to(h.dtype)


def ref_gelu_gate_residual(x, y, gate):
    return x + gate * 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))


def draw(shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Standard normal float64 tensors holding ``dtype``-exact values."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype).double() for s in shapes]


def prefix_mask(B: int, L: int) -> torch.Tensor:
    """Valid prefixes of lengths L, L // 2, ... (at least one valid bin per trial), as bool ``[B, L]``."""
    lengths = torch.tensor([max(1, L >> b) for b in range(B)])
    return torch.arange(L)[None, :] < lengths[:, None]


def check(fn, ref_fn, inputs: list[torch.Tensor], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Forward and all gradients of ``fn`` in ``dtype`` vs ``ref_fn`` in float64; returns fn's output."""
    ref_in = [t.clone().requires_grad_() for t in inputs]
    ref = ref_fn(*ref_in)
    (upstream,) = draw([tuple(ref.shape)], dtype, seed + 1)
    ref_grads = torch.autograd.grad(ref, ref_in, upstream)

    test_in = [t.to(dtype).requires_grad_() for t in inputs]
    out = fn(*test_in)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out, test_in, upstream.to(dtype))
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol, f"forward rel err {rel_err(out, ref):.2e} >= {tol}"
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == dtype and a.shape == b.shape
        assert rel_err(a, b) < tol, f"grad {i} rel err {rel_err(a, b):.2e} >= {tol}"
    return out


CASES = [(torch.float32, C, L) for C in (8, 24) for L in (5, 37)]
CASES += [(torch.float64, 24, 37), (torch.float16, 24, 37), (torch.bfloat16, 24, 37)]
CASE_IDS = [f"{str(d).split('.')[1]}-C{C}-L{L}" for d, C, L in CASES]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,C,L", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_modulated_norm_matches_float64_reference(backend, dtype, C, L, masked):
    B, seed = 2, 100 * C + L
    x, shift, scale = draw([(B, C, L), (B, C, 1), (B, C, 1)], dtype, seed)
    mask = prefix_mask(B, L) if masked else None
    out = check(
        lambda x, shift, scale: modulated_norm(x, shift, scale, mask, backend=backend),
        lambda x, shift, scale: ref_modulated_norm(x, shift, scale, mask),
        [x, shift, scale], dtype, seed,
    )
    if masked:
        assert (out.detach()[~mask[:, None, :].expand_as(out)] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,C,L", CASES, ids=CASE_IDS)
def test_gelu_gate_residual_matches_float64_reference(backend, dtype, C, L):
    B, seed = 2, 100 * C + L + 7
    x, y, gate = draw([(B, C, L), (B, C, L), (B, C, 1)], dtype, seed)
    check(
        lambda x, y, gate: gelu_gate_residual(x, 2 * y, gate, backend=backend),
        lambda x, y, gate: ref_gelu_gate_residual(x, 2 * y, gate),
        [x, y, gate], dtype, seed,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C,L", [(8, 4200), (300, 6)])
def test_several_programs_per_row(backend, C, L):
    """Shapes that split a row over several Triton programs: time chunks whose partial sums of the
    shift/scale/gate gradients are added up (L = 4200 > 16 tiles of 256 steps), and channel blocks of the
    gated residual (C = 300 > 256)."""
    seed = C + L
    x, y, shift, scale = draw([(1, C, L), (1, C, L), (1, C, 1), (1, C, 1)], torch.float32, seed)
    mask = torch.ones(1, L, dtype=torch.bool)
    mask[0, L // 2] = False
    check(
        lambda x, shift, scale: modulated_norm(x, shift, scale, mask, backend=backend),
        lambda x, shift, scale: ref_modulated_norm(x, shift, scale, mask),
        [x, shift, scale], torch.float32, seed,
    )
    check(
        lambda x, y, gate: gelu_gate_residual(x, y, gate, backend=backend),
        ref_gelu_gate_residual, [x, y, shift], torch.float32, seed,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_bins_are_exactly_zero_and_pass_no_gradient(backend):
    B, C, L = 2, 24, 37
    shapes = [(B, C, L), (B, C, 1), (B, C, 1), (B, C, L)]
    x, shift, scale, upstream = (t.float() for t in draw(shapes, torch.float32, 3))
    x.requires_grad_()
    mask = prefix_mask(B, L)
    pad = ~mask[:, None, :].expand(B, C, L)
    out = modulated_norm(x, shift + 5, scale, mask, backend=backend)
    (dx,) = torch.autograd.grad(out, x, upstream)
    assert (out.detach()[pad] == 0).all()
    assert (dx[pad] == 0).all()
    assert (out.detach()[~pad] != 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_unfused_block_ops(backend):
    """The block's chain, unfused (ChannelNorm, apply_mask, F.gelu) vs fused, with stand-ins for S4 and MLP.

    Inputs as in DenoiserBlock: x a non-contiguous ``[B, C, L]`` view, the six modulation vectors
    chunks of one ``[B, 6C, 1]`` tensor, a float mask; float32 throughout, relative error 1e-5.
    """
    B, C, L = 2, 24, 37
    torch.manual_seed(0)
    s4, mlp = nn.Conv1d(C, C, 5, padding=2), PointwiseMLP(C)
    norm = ChannelNorm(C, affine=False)
    x0, mods = (t.float() for t in draw([(B, L, C), (B, 6 * C, 1)], torch.float32, 4))
    mask = prefix_mask(B, L).float()

    def unfused(x, mods):
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=1)
        h = norm(x) * (1 + scale1) + shift1
        x = x + gate1 * F.gelu(s4(apply_mask(h, mask)))
        h = norm(x) * (1 + scale2) + shift2
        return x + gate2 * mlp(h)

    def fused(x, mods):
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=1)
        y = s4(modulated_norm(x, shift1, scale1, mask, backend=backend))
        x = gelu_gate_residual(x, y, gate1, backend)
        return x + gate2 * mlp(modulated_norm(x, shift2, scale2, backend=backend))

    params = list(s4.parameters()) + list(mlp.parameters())
    results = []
    for fn in (unfused, fused):
        x, m = x0.clone().requires_grad_(), mods.clone().requires_grad_()
        out = fn(x.transpose(1, 2), m)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        results.append([out, *torch.autograd.grad(out, [x, m, *params], upstream)])
    for i, (a, b) in enumerate(zip(*results)):
        assert rel_err(b, a.double()) < 1e-5, f"output/grad {i}: rel err {rel_err(b, a.double()):.2e}"


def test_auto_on_cpu_is_the_torch_path():
    x, shift, scale = (t.float() for t in draw([(2, 8, 5), (2, 8, 1), (2, 8, 1)], torch.float32, 6))
    assert torch.equal(modulated_norm(x, shift, scale), modulated_norm(x, shift, scale, backend="torch"))
    assert torch.equal(gelu_gate_residual(x, x, shift), gelu_gate_residual(x, x, shift, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_promote(backend):
    x, shift, scale = draw([(2, 8, 5), (2, 8, 1), (2, 8, 1)], torch.float32, 7)
    assert modulated_norm(x.float(), shift, scale.float(), backend=backend).dtype == torch.float64
    assert gelu_gate_residual(x.half(), x.float(), shift.half(), backend=backend).dtype == torch.float32


# ---------------------------------------------------------------- bad input and backends


@pytest.fixture
def good() -> tuple[torch.Tensor, ...]:
    return tuple(t.float() for t in draw([(2, 8, 5), (2, 8, 1), (2, 8, 1)], torch.float32, 8))


def test_bad_tensors_name_argument(good):
    x, v, w = good
    mask = torch.ones(2, 5, dtype=torch.bool)
    cases = [
        (lambda: modulated_norm(x.tolist(), v, w), r"^x must be a floating-point torch.Tensor, got list"),
        (lambda: modulated_norm(x.long(), v, w), r"^x must be a float16, bfloat16, float32 or float64 tensor, "
         r"got dtype torch.int64"),
        (lambda: modulated_norm(x[0], v, w), r"^x must have shape \[B, C, L\]"),
        (lambda: modulated_norm(x[:, :, :0], v, w), r"^x must have shape \[B, C, L\] with B, C, L >= 1"),
        (lambda: modulated_norm(x, v[..., 0], w), r"^shift must have shape \[B, C, 1\] = \(2, 8, 1\)"),
        (lambda: modulated_norm(x, v, w[:1]), r"^scale must have shape \[B, C, 1\]"),
        (lambda: modulated_norm(x, v, w.to(torch.complex64)), r"^scale must be a float16"),
        (lambda: modulated_norm(x, v, w, mask[:, :4]), r"^mask must have shape \[B, L\] = \(2, 5\)"),
        (lambda: modulated_norm(x, v, w, mask.int()), r"^mask must be a bool or floating-point tensor"),
        (lambda: modulated_norm(x, v, w, mask.tolist()), r"^mask must be a torch.Tensor or None"),
        (lambda: modulated_norm(x, v.to("meta"), w), r"one device, got x on cpu, shift on meta, scale on cpu"),
        (lambda: gelu_gate_residual(x, x[:, :, :4], v), r"^y must have the shape of x \(2, 8, 5\)"),
        (lambda: gelu_gate_residual(x, x.int(), v), r"^y must be a float16"),
        (lambda: gelu_gate_residual(x, x, v[:, :1]), r"^gate must have shape \[B, C, 1\]"),
        (lambda: gelu_gate_residual(x, x, v.to("meta")), r"got x on cpu, y on cpu, gate on meta"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), True, "1e-5"])
def test_bad_eps_rejected(good, eps):
    with pytest.raises(ValueError, match=r"^eps must be a positive finite number"):
        modulated_norm(*good, eps=eps)


def test_unknown_backend_rejected(good):
    x, v, w = good
    with pytest.raises(ValueError, match=r"unknown fused-kernel backend 'keops'"):
        modulated_norm(x, v, w, backend="keops")
    with pytest.raises(ValueError, match=r"unknown fused-kernel backend 'cuda'"):
        gelu_gate_residual(x, x, v, backend="cuda")


def test_triton_norm_channel_limit():
    x, v = (t.float() for t in draw([(1, 1025, 3), (1, 1025, 1)], torch.float32, 9))
    with pytest.raises(ValueError, match=r"supports C <= 1024, got C=1025"):
        modulated_norm(x, v, v, backend="triton")
    assert torch.isfinite(modulated_norm(x, v, v)).all()  # "auto" falls back to torch


def test_unavailable_triton_raises_with_reason(good, monkeypatch):
    x, v, w = good
    monkeypatch.setattr(triton_backend, "triton_status", lambda device: (False, "no triton in this test"))
    reason = r"'triton' is unavailable on cpu: no triton in this test"
    with pytest.raises(BackendUnavailableError, match=reason):
        modulated_norm(x, v, w, backend="triton")
    with pytest.raises(BackendUnavailableError, match=reason):
        gelu_gate_residual(x, x, v, backend="triton")
    assert modulated_norm(x, v, w).shape == x.shape  # "auto" still runs


def test_triton_rows_beyond_int32_offsets_rejected():
    """The Triton kernels address a batch row [C, L] with int32 offsets (meta tensors: nothing is allocated)."""
    x, v = torch.empty(1, 2**11, 2**20, device="meta"), torch.empty(1, 2**11, 1, device="meta")
    with pytest.raises(ValueError, match=r"needs C \* L < 2\*\*31 per batch row, got C=2048, L=1048576"):
        triton_backend.modulated_norm_triton(x, v, v, None, 1e-5)
    with pytest.raises(ValueError, match=r"needs C \* L < 2\*\*31 per batch row"):
        triton_backend.gelu_gate_residual_triton(x, x, v)
