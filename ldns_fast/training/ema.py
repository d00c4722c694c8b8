"""Exponential moving average of model weights with the warm-up of the LDNS reference."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copy of ``model`` updated as ``s <- d s + (1 - d) p`` after each optimiser step.

    The decay warms up: ``d_t = min(max_decay, 1 - (1 + t)^(-power))`` for step ``t``.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, power: float = 2 / 3) -> None:
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.power = power
        self.step = 0

    def decay(self, step: int) -> float:
        """Decay used at optimiser step ``step`` (1-based)."""
        return min(self.max_decay, 1.0 - (1.0 + step) ** (-self.power))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s parameters into the shadow; buffers are copied."""
        self.step += 1
        weight = 1.0 - self.decay(self.step)
        for shadow, param in zip(self.shadow.parameters(), model.parameters()):
            shadow.lerp_(param.detach(), weight)
        for shadow, buf in zip(self.shadow.buffers(), model.buffers()):
            shadow.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.step = int(state["step"])
