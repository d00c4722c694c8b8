"""Argument checks shared across the package: configuration fields, seeds, devices and a model's conditions."""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED_LIMIT = 1 << 64  # seeds are unsigned 64-bit integers (torch generators; numpy takes them too)
# Time bins from 1 microsecond to 1 hour: rates (counts / bin_width) and durations stay finite in float32.
BIN_WIDTH_RANGE = (1e-6, 3600.0)


def check_conditions(
    n: int, T: int, cond_dim: int, behavior_channels: int, conditions: object, behavior: object,
    required: bool = False,
) -> None:
    """Check ``conditions [n, cond_dim]`` and ``behavior [n, behavior_channels, >= T]`` (numpy arrays or
    tensors, either None) against a model: shapes, and finite values. ``required``: a conditional model
    needs its conditions (an exported sampler graph takes them as an input)."""
    if conditions is None and required and cond_dim:
        raise ValueError(f"this model is conditional: give conditions [n, {cond_dim}]")
    if conditions is not None:
        if not cond_dim:
            raise ValueError("this model takes no conditions (it was trained without them)")
        if tuple(conditions.shape) != (n, cond_dim):
            raise ValueError(f"conditions must have shape [n, cond_dim] = [{n}, {cond_dim}] for this model, "
                             f"got {list(conditions.shape)}")
    if behavior is not None:
        if not behavior_channels:
            raise ValueError("this model takes no behavior (it was trained without it)")
        if len(behavior.shape) != 3 or tuple(behavior.shape[:2]) != (n, behavior_channels) or behavior.shape[2] < T:
            raise ValueError(f"behavior must have shape [n, B, T] = [{n}, {behavior_channels}, >= {T}] for this "
                             f"model, got {list(behavior.shape)}")
    for name, value in (("conditions", conditions), ("behavior", behavior)):
        if value is None:
            continue
        if hasattr(value, "isfinite"):  # a tensor
            finite = bool(value.isfinite().all())
        else:  # a numpy array: NaN or inf make the largest magnitude non-finite
            finite = math.isfinite(float(abs(value).max(initial=0)))
        if not finite:
            raise ValueError(f"{name} contain NaN or infinite values")


def is_integer(value: object, numpy: bool = False) -> bool:
    """Whether ``value`` is an integer: a Python ``int`` (or, with ``numpy``, any integral type such as
    ``np.int64``), never a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral if numpy else int)


def is_number(value: object) -> bool:
    """Whether ``value`` is a Python ``int`` or ``float`` (not a ``bool``; finiteness is the caller's check)."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def require_even_state(value: object, name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an even integer >= 2 (an SSM state size: its
    modes come in conjugate pairs)."""
    if not is_integer(value) or value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer >= 2, got {value!r}")


def require_positive_ints(config: object, *names: str) -> None:
    """Raise a ValueError naming ``Type.field`` unless each named field of ``config`` is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if not is_integer(value) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


def require_reals(
    config: object, low: float, high: float, *names: str, open_low: bool = False, open_high: bool = False
) -> None:
    """Raise a ValueError naming ``Type.field`` unless each named field of ``config`` is a finite real number
    in ``[low, high]`` (an open end with ``open_low`` / ``open_high``)."""
    for name in names:
        value = getattr(config, name)
        real = is_number(value) and math.isfinite(value)
        above = real and (low < value if open_low else low <= value)
        if not (above and (value < high if open_high else value <= high)):
            bounds = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high or high == math.inf else ']'}"
            raise ValueError(f"{type(config).__name__}.{name} must be a finite number in {bounds}, got {value!r}")


def check_bin_width(bin_width: object, name: str = "bin_width") -> float:
    """``bin_width`` (seconds) as a float within :data:`BIN_WIDTH_RANGE`; else a ValueError naming ``name``."""
    import numpy as np

    low, high = BIN_WIDTH_RANGE
    value = np.asarray(bin_width) if not isinstance(bin_width, str) else None
    if value is None or value.size != 1 or value.dtype.kind not in "iuf" or not low <= float(value) <= high:
        raise ValueError(f"{name} must be one number of seconds in [{low:g}, {high:g}], got {bin_width!r}")
    return float(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int in ``[0, 2**64)``, the range torch and numpy generators agree on; else a ValueError."""
    import numpy as np

    if not is_integer(seed, numpy=True) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (cpu, or an available cuda/mps device).

    Raises:
        ValueError: an unknown device name, or a device this machine does not have.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:INDEX") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use cpu, cuda or cuda:INDEX")
    return parsed
