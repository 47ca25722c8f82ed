"""Exponential moving average of the weights (the recipe's ``--model-ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    Floating-point buffers are averaged like the parameters; other buffers are copied. The
    averaged model is a separate copy in eval mode that never needs gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99996) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, averaged in self.module.state_dict().items():
            value = current[name].detach()
            if averaged.is_floating_point():
                averaged.lerp_(value.to(averaged.dtype), 1.0 - self.decay)
            else:
                averaged.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
