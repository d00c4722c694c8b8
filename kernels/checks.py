"""Input validation shared by every kernel backend: clear errors before any maths runs."""
from __future__ import annotations

import torch

from ldns_fast.validation import is_integer


def require_complex(name: str, t: object) -> torch.Tensor:
    """Return ``t`` if it is a complex tensor, else raise a ValueError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor, got {type(t).__name__}")
    if not t.is_complex():
        raise ValueError(
            f"{name} must be a complex tensor (complex64 or complex128), got dtype {t.dtype}; "
            f"build it with torch.complex(real, imag) or torch.view_as_complex"
        )
    return t


def require_finite(name: str, t: torch.Tensor) -> None:
    """Raise a ValueError naming ``name`` if ``t`` holds NaN or infinity."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def require_length(L: object) -> int:
    """Return ``L`` as an int if it is a positive integer (``int`` or a numpy integer), else raise a ValueError."""
    if not is_integer(L, numpy=True) or L <= 0:
        raise ValueError(f"L must be a positive integer, got {L!r}")
    return int(L)


def require_states(Np: int) -> None:
    """Raise a ValueError when the state size ``Np`` is 0."""
    if Np == 0:
        raise ValueError("the state size Np must be at least 1, got 0 (an SSM kernel needs states)")


def common_complex_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The complex dtype all ``tensors`` promote to (complex64 or complex128)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def same_device(**named: torch.Tensor) -> torch.device:
    """Return the device shared by the named tensors, else raise a ValueError naming them."""
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")
    return next(iter(devices.values()))
