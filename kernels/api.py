"""Public kernel entry points with input checks and backend dispatch.

``vandermonde_kernel`` (S4D) and ``cauchy_kernel`` (DPLR S4) run on one of four backends:
``"naive"`` (the materialising formulas of :mod:`.reference`: every term held at once),
``"torch"`` (exact, float64-capable, bounded memory), ``"keops"`` (pykeops lazy reductions) and
``"triton"`` (custom forward/backward kernels; compiled on CUDA, interpreted on CPU tensors). Every
backend runs behind the same custom ops (:mod:`.ops`), so ``torch.compile`` traces them without breaks.
``"auto"`` picks one per device and problem size (:func:`resolve_backend`): a static cost model,
deterministic (a seeded run makes the same choice on every host), calibrated on 2 CPU cores with
``benchmarks/test_dispatch_bench.py`` (``benchmarks/results/dispatch_cpu.md``):

- CPU: the naive formula while it materialises at most :data:`NAIVE_MAX_ELEMENTS` complex terms (below
  that its single pass beats the tiled path's extra ops: up to 1.5x at 1-4 channels), else the torch
  path, which measured fastest at every larger shape forward and backward (L = 140 .. 65,536,
  H = 64 .. 512: 3.4-90x the naive formula, 2.9-32x keops).
- CUDA: Triton when it is available, else the torch path (not timed on a GPU yet).
"""
from __future__ import annotations

import torch

from . import ops
from .checks import common_complex_dtype, require_complex, require_length, require_states, same_device
BACKENDS = ("naive", "torch", "keops", "triton")
# Materialised complex terms (rows x Np x L for Vandermonde, R x P x Np x M for Cauchy) up to which the
# naive formula is the faster one on CPU (measured crossover: 4,096-12,000 terms).
NAIVE_MAX_ELEMENTS = 8192


class BackendUnavailableError(RuntimeError):
    """An explicitly requested kernel backend cannot run here (the message says why)."""


def backend_status(backend: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device``, and the reason when it cannot."""
    device = torch.device(device)
    if backend in ("naive", "torch"):
        return True, ""
    if backend == "keops":
        from .keops_backend import keops_status

        return keops_status(device)
    if backend == "triton":
        from .triton_backend import triton_status

        return triton_status(device)
    raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS + ('auto',)}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device``."""
    return [b for b in BACKENDS if backend_status(b, device)[0]]


def resolve_backend(backend: str, device: torch.device, terms: int | None = None) -> str:
    """Map ``"auto"`` to a concrete backend for ``device``; check an explicit choice is usable.

    ``terms``: the complex terms the naive formula would materialise for this problem (SSM kernels only);
    on CPU ``"auto"`` takes the naive formula up to :data:`NAIVE_MAX_ELEMENTS` of them. Without it (the
    fused ops) ``"auto"`` is Triton on CUDA, else torch.
    """
    if backend == "auto":
        if device.type == "cuda" and backend_status("triton", device)[0]:
            return "triton"
        if device.type == "cpu" and terms is not None and terms <= NAIVE_MAX_ELEMENTS:
            return "naive"
        return "torch"
    ok, why = backend_status(backend, device)
    if not ok:
        raise BackendUnavailableError(f"kernel backend {backend!r} is unavailable on {device}: {why}")
    if backend == "triton" and device.type == "cpu":
        # Choose the interpreter now: calling a custom op imports torch's compiler, which imports triton.
        from .triton_backend import load_kernels

        load_kernels()
    return backend


def vandermonde_kernel(
    v: torch.Tensor, x: torch.Tensor, L: int, backend: str = "auto", *, check_finite: bool = True
) -> torch.Tensor:
    """S4D convolution kernel ``K[h, l] = 2 Re(sum_n v[h, n] exp(x[h, n] l))``.

    Args:
        v: complex ``[H, Np]`` output weights (e.g. discretised ``C * B``).
        x: complex ``[H, Np]`` log of the discrete state eigenvalues (``log dA``).
        L: kernel length (positive int).
        backend: ``"auto"`` (see :func:`resolve_backend`) or one of :data:`BACKENDS`.
        check_finite: reject NaN/inf inputs and an overflowing kernel (``Re(x) > 0`` at long ``L``; one
            device sync; turn off inside graph capture).
    Returns:
        real ``[H, L]`` kernel, float32 for complex64 inputs, float64 for complex128.
    """
    require_complex("v", v)
    require_complex("x", x)
    if v.dim() != 2:
        raise ValueError(f"v must have shape [H, Np], got {tuple(v.shape)}")
    if x.shape != v.shape:
        raise ValueError(f"x must have the shape of v {tuple(v.shape)}, got {tuple(x.shape)}")
    L = require_length(L)
    require_states(v.shape[-1])
    device = same_device(v=v, x=x)
    dtype = common_complex_dtype(v, x)
    v, x = v.to(dtype), x.to(dtype)
    return ops.vandermonde(v, x, L, resolve_backend(backend, device, terms=v.numel() * L), check_finite)


def _shared_poles(v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v [R, P, Np], w [P, Np])`` from broadcastable ``v, w [..., Np]``: the leading batch dimensions
    over which w is constant become the rows R sharing its poles (the rest, P, is w's own batch)."""
    batch = torch.broadcast_shapes(v.shape[:-1], w.shape[:-1])
    w_batch = (1,) * (len(batch) - (w.dim() - 1)) + tuple(w.shape[:-1])
    split = len(batch)
    while split > 0 and w_batch[split - 1] == batch[split - 1]:
        split -= 1
    if any(size != 1 for size in w_batch[:split]):  # w varies inside the shared part: one pole set per row
        split = 0
    Np = v.shape[-1]
    shared = batch[split:]
    v = v.expand(*batch, Np).reshape(-1, shared.numel(), Np)
    return v, w.reshape(*w_batch[split:], Np).expand(*shared, Np).reshape(shared.numel(), Np)


def cauchy_kernel(
    v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, backend: str = "auto", *, check_finite: bool = True
) -> torch.Tensor:
    """Cauchy sum over conjugate pairs ``r[..., m] = sum_n v/(z_m - w_n) + conj(v)/(z_m - conj(w_n))``.

    Args:
        v: complex ``[..., Np]`` numerators.
        z: complex ``[M]`` evaluation nodes (constant: no gradient flows to z).
        w: complex ``[..., Np]`` poles; broadcast against ``v``. Poles shared by several rows of ``v``
            (w broadcast over v's leading dimensions, as in the DPLR kernel) are evaluated once for all of
            them.
        backend: ``"auto"`` (see :func:`resolve_backend`) or one of :data:`BACKENDS`.
        check_finite: reject NaN/inf inputs and a node on a pole (one device sync; turn off inside graph
            capture).
    Returns:
        complex ``[..., M]`` with the broadcast batch shape of ``v`` and ``w``.
    """
    require_complex("v", v)
    require_complex("z", z)
    require_complex("w", w)
    if v.dim() < 1 or w.dim() < 1:
        raise ValueError(f"v and w must have shape [..., Np], got {tuple(v.shape)} and {tuple(w.shape)}")
    if z.dim() != 1 or z.shape[0] == 0:
        raise ValueError(f"z must have shape [M] with M >= 1, got {tuple(z.shape)}")
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"v and w must share the state size Np, got {v.shape[-1]} and {w.shape[-1]}")
    try:
        batch = torch.broadcast_shapes(v.shape[:-1], w.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"batch shapes of v {tuple(v.shape)} and w {tuple(w.shape)} do not broadcast"
        ) from err
    device = same_device(v=v, z=z, w=w)
    dtype = common_complex_dtype(v, z, w)
    v, z, w = v.to(dtype), z.to(dtype), w.to(dtype)
    require_states(v.shape[-1])
    v, w = _shared_poles(v, w)
    out = ops.cauchy(v, z, w, resolve_backend(backend, device, terms=v.numel() * z.shape[0]), check_finite)
    return out.reshape(*batch, z.shape[0])
