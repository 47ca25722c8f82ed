"""The DeiT training losses: a base loss on the [CLS] head, a distillation loss on the [DIST] head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model_rules import DISTILLATION_TYPES, check_distillation_settings

__all__ = ["DISTILLATION_TYPES", "KL_REDUCTIONS", "DistillationLoss", "LabelSmoothingCrossEntropy", "StudentCriterion", "soft_target_cross_entropy"]


# How soft distillation averages its summed KL divergence (the names of ``F.kl_div``'s reductions):
# "mean" over every logit (batch x classes), as the DeiT authors' losses.py does; "batchmean" over
# the images, the KL per image of Hinton et al. and timm's TokenDistillationTask: classes times
# stronger against the label term.
KL_REDUCTIONS = ("mean", "batchmean")


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
      as the authors' ``losses.py`` does (``kl_reduction="mean"``), or by the number of images
      (``"batchmean"``, see :data:`KL_REDUCTIONS`).

    ``base_criterion`` defaults to cross-entropy accepting index or soft (mixup) targets.
    """

    def __init__(self, distillation_type: str = "hard", alpha: float = 0.5, tau: float = 1.0, base_criterion: nn.Module | None = None,
                 kl_reduction: str = "mean") -> None:
        super().__init__()
        check_distillation_settings(distillation_type, alpha, tau)
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.kl_reduction = kl_reduction
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
            averaged_over = distillation_logits.numel() if self.kl_reduction == "mean" else distillation_logits.shape[0]
            distillation_loss = kl * (t * t) / averaged_over
        else:
            distillation_loss = F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=1))
        return (1 - self.alpha) * base_loss + self.alpha * distillation_loss


class StudentCriterion(nn.Module):
    """The training loss of a student model, from its outputs.

    * a model with one head (plain ViT): ``base(logits, y)``;
    * a model with CLS and DIST heads and no teacher: both heads learn the labels,
      ``(base(cls, y) + base(dist, y)) / 2`` (so the "no distillation" baseline has the same
      architecture and cost as the distilled runs);
    * with a teacher: :class:`DistillationLoss`.

    Logits are promoted to float32 first, so mixed-precision runs compute the loss in full precision.
    """

    def __init__(self, base_criterion: nn.Module, distillation: DistillationLoss | None = None, *, distil_class_token: bool = False) -> None:
        super().__init__()
        self.base_criterion = base_criterion
        self.distillation = distillation
        # A model with one head learns both the labels and the teacher on it (the paper's
        # "no distillation token" ablation) instead of being refused.
        self.distil_class_token = distil_class_token

    def forward(self, outputs: object, target: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        distillation_logits = getattr(outputs, "distillation_logits", None)
        if distillation_logits is None:
            if self.distillation is None:
                return self.base_criterion(outputs.logits.float(), target)
            if not self.distil_class_token:
                raise ValueError("distillation needs a student with a distillation token (a DeiT '-distilled' model)")
            logits = outputs.logits.float()
            return self.distillation(logits, logits, target, None if teacher_logits is None else teacher_logits.float())
        cls_logits, distillation_logits = outputs.cls_logits.float(), distillation_logits.float()
        if self.distillation is None:
            return (self.base_criterion(cls_logits, target) + self.base_criterion(distillation_logits, target)) / 2
        return self.distillation(cls_logits, distillation_logits, target, None if teacher_logits is None else teacher_logits.float())
