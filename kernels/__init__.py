"""S4 kernel primitives (installed as ``ldns_fast.kernels``).

- :func:`vandermonde_kernel`: the S4D kernel, a Vandermonde product ``[H, Np] -> [H, L]``.
- :func:`cauchy_kernel`: the DPLR S4 kernel's Cauchy sum ``[..., Np] x [M] -> [..., M]``.
- :func:`modulated_norm`, :func:`gelu_gate_residual`: the denoiser block's fused adaLN norm and gated
  GELU residual on ``[B, C, L]`` (:mod:`ldns_fast.kernels.fused`).

Backends: ``"naive"``, ``"torch"``, ``"keops"``, ``"triton"`` and ``"auto"`` (a cost model per device and
size); see :mod:`ldns_fast.kernels.api` (the fused block ops have ``"torch"``, ``"triton"`` and ``"auto"``).
Every backend runs behind the torch custom ops of :mod:`.ops`; :mod:`.aot` compiles the Triton kernels for CUDA targets without a GPU.
Importing this package imports no Triton (:mod:`.triton_backend` loads it on first use).
"""
from .api import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend_status,
    cauchy_kernel,
    vandermonde_kernel,
)
from .fused import gelu_gate_residual, modulated_norm
from .reference import cauchy_naive, vandermonde_naive

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "cauchy_kernel",
    "cauchy_naive",
    "gelu_gate_residual",
    "modulated_norm",
    "vandermonde_kernel",
    "vandermonde_naive",
]
