"""The kernels as torch custom ops (``torch.ops.ldns_fast.*``), forward and backward, on every backend.

Each op takes the name of a resolved backend (``"naive"``, ``"torch"``, ``"keops"`` or ``"triton"``) and runs
that backend module's ``<op>_<backend>`` (forward) or ``<op>_<backend>_backward`` (the analytic gradient,
itself an op). Fake implementations give output shapes and dtypes without running anything, and the
gradients are registered with ``register_autograd``, so ``torch.compile`` traces through the ops as
opaque nodes (no graph break, on CPU and CUDA alike) and ``torch.library.opcheck`` can test them.

Data-dependent input checks (NaN/inf scans) run inside the ops, on real tensors, so they cost no
graph break either. Second derivatives are not supported.

Lazy conjugate views (``Tensor.conj()``) must not reach or be made inside an implementation: when a
compiled graph calls a custom op, torch 2.13 runs its implementation with the conjugate bit ignored
(``1 / a.conj()`` computes ``1 / a``). The ops materialise such inputs and the backends use
``conj_physical``.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import Tensor
from torch.library import custom_op

from .checks import require_finite
from .torch_backend import accumulation_dtype

_MODULES = {"naive": ".reference", "torch": ".torch_backend", "keops": ".keops_backend", "triton": ".triton_backend"}
# Backends whose Cauchy sums take one pole set per row (``[rows, Np]``): the op expands shared poles for them.
_ROW_CAUCHY = ("keops", "triton")

# Inductor options for compiling models with DPLR S4 layers (``torch.compile(model, options=...)``). With
# its convolution layout optimisation on, torch 2.13's inductor returns wrong gradients for the DPLR
# kernel's parameters when the kernel's complex arithmetic and a Conv1d share one graph (outputs and
# input gradients stay right): measured on CPU, e.g. conv1d(S4(x)) with mode="dplr".
COMPILE_OPTIONS = {"layout_optimization": False}


def implementation(kind: str, backend: str, backward: bool = False) -> Callable[..., object]:
    """``<kind>_<backend>`` (or its ``_backward``) from the backend's module."""
    module = importlib.import_module(_MODULES[backend], __package__)
    return getattr(module, f"{kind}_{backend}{'_backward' if backward else ''}")


def _materialised(*tensors: Tensor) -> list[Tensor]:
    """The tensors with lazy conjugate/negative bits resolved (see the module docstring)."""
    return [t.resolve_conj().resolve_neg() for t in tensors]


# ---------------------------------------------------------------- Vandermonde


@custom_op("ldns_fast::vandermonde", mutates_args=())
def vandermonde(v: Tensor, x: Tensor, L: int, backend: str, check_finite: bool) -> Tensor:
    """``K [H, L] = 2 Re(sum_n v z^l)``, ``z = exp(x)``; v, x complex ``[H, Np]``."""
    if check_finite:
        require_finite("v", v)
        require_finite("x", x)
    out = implementation("vandermonde", backend)(*_materialised(v, x), L)
    if check_finite and not bool(torch.isfinite(out).all()):
        growth = float((x.real * (L - 1)).max())
        raise ValueError(f"the kernel overflows: max Re(x) (L - 1) = {growth:.3g} (terms grow as exp(Re(x) l); "
                         f"a stable SSM has Re(x) < 0)")
    return out


@vandermonde.register_fake
def _(v, x, L, backend, check_finite):
    return v.new_empty((v.shape[0], L), dtype=v.real.dtype)


@custom_op("ldns_fast::vandermonde_backward", mutates_args=())
def vandermonde_backward(grad: Tensor, v: Tensor, x: Tensor, L: int, backend: str) -> tuple[Tensor, Tensor]:
    """``(dv, dx)`` for the upstream gradient ``grad [H, L]``."""
    return implementation("vandermonde", backend, backward=True)(*_materialised(grad, v, x), L)


@vandermonde_backward.register_fake
def _(grad, v, x, L, backend):
    return torch.empty_like(v), torch.empty_like(x)


def _vandermonde_setup(ctx, inputs, output) -> None:
    v, x, ctx.L, ctx.backend, _ = inputs
    ctx.save_for_backward(v, x)


def _vandermonde_grad(ctx, grad):
    return *vandermonde_backward(grad, *ctx.saved_tensors, ctx.L, ctx.backend), None, None, None


vandermonde.register_autograd(_vandermonde_grad, setup_context=_vandermonde_setup)


# ---------------------------------------------------------------- Cauchy


def _rows(v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``v [R, P, Np]`` and shared poles ``w [P, Np]`` as one pole set per row: two ``[R * P, Np]``."""
    R, P, Np = v.shape
    return v.reshape(R * P, Np), w.expand(R, P, Np).reshape(R * P, Np)


def _cauchy_forward(v: Tensor, z: Tensor, w: Tensor, backend: str) -> Tensor:
    fn = implementation("cauchy", backend)
    if backend not in _ROW_CAUCHY:
        return fn(v, z, w)
    v_rows, w_rows = _rows(v, w)
    return fn(v_rows, z, w_rows).reshape(*v.shape[:2], -1)


def _cauchy_backward(grad: Tensor, v: Tensor, z: Tensor, w: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    fn = implementation("cauchy", backend, backward=True)
    if backend not in _ROW_CAUCHY:
        return fn(grad, v, z, w)
    v_rows, w_rows = _rows(v, w)
    dv, dw = fn(grad.reshape(v_rows.shape[0], -1), v_rows, z, w_rows)
    return dv.reshape(v.shape), dw.reshape(v.shape).sum(0)


@custom_op("ldns_fast::cauchy", mutates_args=())
def cauchy(v: Tensor, z: Tensor, w: Tensor, backend: str, check_finite: bool) -> Tensor:
    """``r [R, P, M] = sum_n v/(z - w) + conj(v)/(z - conj w)``; v complex ``[R, P, Np]``, poles w
    ``[P, Np]`` shared by the R rows of each p, z ``[M]``."""
    if check_finite:
        require_finite("v", v)
        require_finite("z", z)
        require_finite("w", w)
    out = _cauchy_forward(*_materialised(v, z, w), backend)
    if check_finite and not bool(torch.isfinite(out).all()):
        raise ValueError("the Cauchy sum is not finite: a node z lies on (or next to) a pole w or conj(w)")
    return out


@cauchy.register_fake
def _(v, z, w, backend, check_finite):
    return v.new_empty((*v.shape[:2], z.shape[0]))


@custom_op("ldns_fast::cauchy_backward", mutates_args=())
def cauchy_backward(grad: Tensor, v: Tensor, z: Tensor, w: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """``(dv [R, P, Np], dw [P, Np])`` for the upstream gradient ``grad [R, P, M]`` (z is constant)."""
    return _cauchy_backward(*_materialised(grad, v, z, w), backend)


@cauchy_backward.register_fake
def _(grad, v, z, w, backend):
    return torch.empty_like(v), torch.empty_like(w)


def _cauchy_setup(ctx, inputs, output) -> None:
    v, z, w, ctx.backend, _ = inputs
    ctx.save_for_backward(v, z, w)


def _cauchy_grad(ctx, grad):
    v, z, w = ctx.saved_tensors
    dv, dw = cauchy_backward(grad, v, z, w, ctx.backend)
    return dv, None, dw, None, None


cauchy.register_autograd(_cauchy_grad, setup_context=_cauchy_setup)


# ---------------------------------------------------------------- fused denoiser-block ops


@custom_op("ldns_fast::modulated_norm", mutates_args=())
def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, mask: Tensor | None, eps: float,
                   backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(out [B, C, L], mean [B, L], rstd [B, L])``: ``LN_C(x) (1 + scale) + shift`` times ``mask``;
    shift, scale ``[B, C, 1]``; the statistics in the accumulation dtype."""
    return implementation("modulated_norm", backend)(x, shift, scale, mask, eps)


@modulated_norm.register_fake
def _(x, shift, scale, mask, eps, backend):
    B, _, L = x.shape
    stats = x.new_empty((B, L), dtype=accumulation_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@custom_op("ldns_fast::modulated_norm_backward", mutates_args=())
def modulated_norm_backward(grad: Tensor, x: Tensor, scale: Tensor, mask: Tensor | None, mean: Tensor,
                            rstd: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dshift, dscale)`` for the upstream gradient of ``out``."""
    return implementation("modulated_norm", backend, backward=True)(grad, x, scale, mask, mean, rstd)


@modulated_norm_backward.register_fake
def _(grad, x, scale, mask, mean, rstd, backend):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


def _modulated_norm_setup(ctx, inputs, output) -> None:
    x, _, scale, mask, _, ctx.backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, scale, mask, mean, rstd)


def _modulated_norm_grad(ctx, grad, grad_mean, grad_rstd):
    return *modulated_norm_backward(grad, *ctx.saved_tensors, ctx.backend), None, None, None


modulated_norm.register_autograd(_modulated_norm_grad, setup_context=_modulated_norm_setup)


@custom_op("ldns_fast::gelu_gate_residual", mutates_args=())
def gelu_gate_residual(x: Tensor, y: Tensor, gate: Tensor, backend: str) -> Tensor:
    """``x + gate * gelu(y)`` (erf GELU); x, y ``[B, C, L]``, gate ``[B, C, 1]``."""
    return implementation("gelu_gate_residual", backend)(x, y, gate)


@gelu_gate_residual.register_fake
def _(x, y, gate, backend):
    return torch.empty_like(x)


@custom_op("ldns_fast::gelu_gate_residual_backward", mutates_args=())
def gelu_gate_residual_backward(grad: Tensor, y: Tensor, gate: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """``(dy, dgate)`` for the upstream gradient (``dx`` is that gradient itself)."""
    return implementation("gelu_gate_residual", backend, backward=True)(grad, y, gate)


@gelu_gate_residual_backward.register_fake
def _(grad, y, gate, backend):
    return torch.empty_like(y), torch.empty_like(gate)


def _gelu_gate_setup(ctx, inputs, output) -> None:
    _, y, gate, ctx.backend = inputs
    ctx.save_for_backward(y, gate)


def _gelu_gate_grad(ctx, grad):
    return grad, *gelu_gate_residual_backward(grad, *ctx.saved_tensors, ctx.backend), None


gelu_gate_residual.register_autograd(_gelu_gate_grad, setup_context=_gelu_gate_setup)
