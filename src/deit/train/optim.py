"""AdamW with the DeiT parameter groups, layer-wise learning-rate decay, and the warm-up + cosine
learning-rate schedule.

The learning rate is a pure function of the optimizer step, so a resumed run follows exactly
the schedule of an uninterrupted one (the authors' resumed runs are shifted by one epoch).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

# Parameters that are not weights of a linear map: decaying them only fights the model.
NO_DECAY_NAMES = ("cls_token", "distillation_token", "mask_token", "position_embeddings")

# The DeiT recipe quotes its learning rate for a global batch of 512 images.
REFERENCE_BATCH_SIZE = 512


def scaled_lr(base_lr: float, global_batch_size: int) -> float:
    """The linear scaling rule of the recipe: ``base_lr * global_batch / 512``."""
    return base_lr * global_batch_size / REFERENCE_BATCH_SIZE


def is_decayed(name: str, parameter: torch.Tensor) -> bool:
    """Weight decay on matrices and kernels only: not on biases, norms, tokens, positions."""
    if parameter.ndim <= 1:
        return False
    return not any(part in NO_DECAY_NAMES for part in name.split("."))


_BLOCK_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """How deep a parameter sits, for layer-wise learning-rate decay: 0 for the embeddings (patch
    projection, tokens, positions), ``i + 1`` for block ``i``, ``num_layers + 1`` for everything
    after the blocks (final norm, heads, decoder)."""
    if "embeddings." in name:
        return 0
    block = _BLOCK_INDEX.search(name)
    return int(block.group(1)) + 1 if block else num_layers + 1


def layer_lr_scale(depth: int, num_layers: int, layer_decay: float) -> float:
    """The factor on the learning rate at ``depth``: ``layer_decay ** (num_layers + 1 - depth)``, so the
    heads train at the full rate, each block one factor less than the next, the embeddings the least."""
    return layer_decay ** (num_layers + 1 - depth)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW's groups: weight decay or not (:func:`is_decayed`); with ``layer_decay``, also one group per
    depth, each with its ``lr_scale`` (which :meth:`WarmupCosineSchedule.apply` multiplies in)."""
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decayed = is_decayed(name, parameter)
        depth = layer_depth(name, num_layers) if layer_decay is not None else 0
        key = (depth, decayed)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decayed else 0.0}
            if layer_decay is not None:
                groups[key]["lr_scale"] = layer_lr_scale(depth, num_layers, layer_decay)
        groups[key]["params"].append(parameter)
    if layer_decay is None:  # the two groups of the DeiT recipe, always both (an optimizer's state keeps their order)
        groups.setdefault((0, True), {"params": [], "weight_decay": weight_decay})
        groups.setdefault((0, False), {"params": [], "weight_decay": 0.0})
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    layer_decay: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, layer_decay), lr=lr, betas=betas, eps=eps)


class WarmupCosineSchedule:
    """Linear warm-up from ``warmup_lr`` to ``peak_lr``, then cosine decay to ``min_lr``.

    Time is measured in epochs: per step, ``t = step / steps_per_epoch``; per epoch, the lr
    changes only at epoch boundaries (``t = step // steps_per_epoch``), as in the authors' runs.
    The cosine covers the epochs after the warm-up, so the last step trains at ``min_lr``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        peak_lr: float,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 5.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        per_step: bool = True,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must not be negative, got {warmup_epochs}")
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.per_step = per_step
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        t = step / self.steps_per_epoch if self.per_step else float(step // self.steps_per_epoch)
        if t < self.warmup_epochs:
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * t / self.warmup_epochs
        decay_epochs = self.epochs - self.warmup_epochs
        if not self.per_step:
            decay_epochs -= 1  # the last epoch index is epochs - 1
        # A single epoch after the warm-up (per-epoch updates) trains at the peak: there is no decay to spread.
        progress = min((t - self.warmup_epochs) / decay_epochs, 1.0) if decay_epochs > 0 else 0.0
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        """Set every param group's lr for optimizer step ``step`` (0-based) and return it."""
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count, "peak_lr": self.peak_lr, "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch, "warmup_epochs": self.warmup_epochs,
            "warmup_lr": self.warmup_lr, "min_lr": self.min_lr, "per_step": self.per_step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; refuse a schedule of another shape (a changed run would silently drift)."""
        mine = self.state_dict()
        changed = [k for k in mine if k != "step_count" and k in state and state[k] != mine[k]]
        if changed:
            details = ", ".join(f"{k}: checkpoint {state[k]!r} vs now {mine[k]!r}" for k in changed)
            raise ValueError(f"the learning-rate schedule differs from the checkpoint's ({details}); resume with the same settings")
        self.step_count = int(state["step_count"])
