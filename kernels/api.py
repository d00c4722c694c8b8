"""Public kernel entry points with input checks and backend dispatch.

``vandermonde_kernel`` (S4D) and ``cauchy_kernel`` (DPLR S4) run on one of three backends:
``"torch"`` (exact, float64-capable, bounded memory), ``"keops"`` (pykeops lazy reductions) and
``"triton"`` (custom forward/backward kernels; compiled on CUDA, interpreted on CPU tensors). Every
backend runs behind the same custom ops (:mod:`.ops`), so ``torch.compile`` traces them without breaks.
``"auto"`` picks Triton on CUDA and the torch path on CPU. On CPU, keops is faster for long Cauchy sums
(``benchmarks/results/cpu-2core.md``) but compiles its formulas once per host and runs its own OpenMP
pool beside torch's, so it is chosen explicitly (``backend="keops"``) rather than by ``"auto"``.
"""
from __future__ import annotations

import torch

from . import ops
from .checks import common_complex_dtype, require_complex, require_length, require_states, same_device

BACKENDS = ("torch", "keops", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested kernel backend cannot run here (the message says why)."""


def backend_status(backend: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device``, and the reason when it cannot."""
    device = torch.device(device)
    if backend == "torch":
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


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend for ``device``; check an explicit choice is usable."""
    if backend == "auto":
        if device.type == "cuda" and backend_status("triton", device)[0]:
            return "triton"
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
        backend: ``"auto"``, ``"torch"``, ``"keops"`` or ``"triton"``.
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
    return ops.vandermonde(v, x, L, resolve_backend(backend, device), check_finite)


def cauchy_kernel(
    v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, backend: str = "auto", *, check_finite: bool = True
) -> torch.Tensor:
    """Cauchy sum over conjugate pairs ``r[..., m] = sum_n v/(z_m - w_n) + conj(v)/(z_m - conj(w_n))``.

    Args:
        v: complex ``[..., Np]`` numerators.
        z: complex ``[M]`` evaluation nodes (constant: no gradient flows to z).
        w: complex ``[..., Np]`` poles; broadcast against ``v``.
        backend: ``"auto"``, ``"torch"``, ``"keops"`` or ``"triton"``.
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
        v, w = torch.broadcast_tensors(v, w)
    except RuntimeError as err:
        raise ValueError(
            f"batch shapes of v {tuple(v.shape)} and w {tuple(w.shape)} do not broadcast"
        ) from err
    device = same_device(v=v, z=z, w=w)
    dtype = common_complex_dtype(v, z, w)
    v, z, w = v.to(dtype), z.to(dtype), w.to(dtype)
    batch, Np = v.shape[:-1], v.shape[-1]
    require_states(Np)
    out = ops.cauchy(v.reshape(-1, Np), z, w.reshape(-1, Np), resolve_backend(backend, device), check_finite)
    return out.reshape(*batch, z.shape[0])
