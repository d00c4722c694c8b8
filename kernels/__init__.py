"""S4 kernel primitives (installed as ``ldns_fast.kernels``).

- :func:`vandermonde_kernel`: the S4D kernel, a Vandermonde product ``[H, Np] -> [H, L]``.
- :func:`cauchy_kernel`: the DPLR S4 kernel's Cauchy sum ``[..., Np] x [M] -> [..., M]``.

Backends: ``"torch"``, ``"keops"``, ``"triton"`` and ``"auto"``; see :mod:`ldns_fast.kernels.api`.
"""
from .api import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend_status,
    cauchy_kernel,
    vandermonde_kernel,
)
from .reference import cauchy_naive, vandermonde_naive

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "cauchy_kernel",
    "cauchy_naive",
    "vandermonde_kernel",
    "vandermonde_naive",
]
