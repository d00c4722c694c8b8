"""Argument checks shared by the configuration dataclasses."""
from __future__ import annotations


def require_positive_ints(config: object, *names: str) -> None:
    """Raise a ValueError naming ``Type.field`` unless each named field of ``config`` is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")
