"""The DeiT training losses: a base loss on the [CLS] head, a distillation loss on the [DIST] head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTILLATION_TYPES = ("none", "soft", "hard")


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability distribution per sample (mixup / cutmix targets)."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy that accepts class indices or soft targets, with optional label smoothing
    (applied to index targets; soft targets from mixup already carry their smoothing)."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim and target.is_floating_point():
            return soft_target_cross_entropy(logits, target.to(logits.dtype))
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)


class DistillationLoss(nn.Module):
    """The DeiT loss (Touvron et al. 2021, eq. 2 and 3).

    * ``none``: ``base(cls, y)``
    * ``hard``: ``(1 - alpha) * base(cls, y) + alpha * CE(dist, argmax(teacher))``
    * ``soft``: ``(1 - alpha) * base(cls, y) + alpha * tau**2 * KL(softmax(teacher/tau) || softmax(dist/tau))``,
      the KL summed over all elements and divided by the number of logits (``dist.numel()``),
      as the authors' ``losses.py`` does.

    ``base_criterion`` defaults to cross-entropy accepting index or soft (mixup) targets.
    """

    def __init__(self, distillation_type: str = "hard", alpha: float = 0.5, tau: float = 1.0, base_criterion: nn.Module | None = None) -> None:
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.base_criterion = base_criterion if base_criterion is not None else LabelSmoothingCrossEntropy()

    def forward(
        self,
        cls_logits: torch.Tensor,
        distillation_logits: torch.Tensor | None,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        base_loss = self.base_criterion(cls_logits, labels)
        if self.distillation_type == "none":
            return base_loss
        if distillation_logits is None:
            raise ValueError(f"{self.distillation_type} distillation needs the distillation head's logits")
        if teacher_logits is None:
            raise ValueError(f"{self.distillation_type} distillation needs teacher_logits")
        if teacher_logits.shape != distillation_logits.shape:
            raise ValueError(
                f"teacher_logits have shape {tuple(teacher_logits.shape)} but the distillation head gives "
                f"{tuple(distillation_logits.shape)}: teacher and student must predict the same classes"
            )
        teacher_logits = teacher_logits.detach().to(distillation_logits.dtype)
        if self.distillation_type == "soft":
            t = self.tau
            kl = F.kl_div(
                F.log_softmax(distillation_logits / t, dim=1),
                F.log_softmax(teacher_logits / t, dim=1),
                reduction="sum",
                log_target=True,
            )
            distillation_loss = kl * (t * t) / distillation_logits.numel()
        else:
            distillation_loss = F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=1))
        return (1 - self.alpha) * base_loss + self.alpha * distillation_loss
