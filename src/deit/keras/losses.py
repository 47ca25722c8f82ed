"""The training losses of the PyTorch classes in ``keras.ops``: the classification loss chosen by
``config.problem_type`` (as ``DeiTPreTrainedModel._classification_loss``) and the DeiT
distillation loss (as :class:`deit.losses.DistillationLoss`, with its default base criterion).
The choices and checks are :mod:`deit.model_rules`'; nothing here imports PyTorch."""

from __future__ import annotations

from typing import Any

from keras import ops

from ..config import DeiTConfig
from ..model_rules import check_distillation_settings, problem_type_for


def _is_integer(x: Any) -> bool:
    return "int" in str(ops.dtype(x)) or "bool" in str(ops.dtype(x))


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Mean cross-entropy against class indices, or against one distribution per sample (mixup targets)."""
    log_probs = ops.log_softmax(logits, axis=-1)
    if not _is_integer(labels) and len(labels.shape) == len(logits.shape):
        return ops.mean(ops.sum(-ops.cast(labels, logits.dtype) * log_probs, axis=-1))
    picked = ops.take_along_axis(log_probs, ops.reshape(ops.cast(labels, "int32"), (-1, 1)), axis=-1)
    return -ops.mean(picked)


def classification_loss(config: DeiTConfig, logits: Any, labels: Any) -> Any:
    """MSE, cross-entropy or binary cross-entropy, as ``config.problem_type`` or the labels choose
    (:func:`deit.model_rules.problem_type_for`)."""
    num_labels = config.num_labels
    problem_type = problem_type_for(config, _is_integer(labels))
    if problem_type == "regression":
        if num_labels == 1:
            return ops.mean(ops.square(ops.reshape(logits, (-1,)) - ops.reshape(ops.cast(labels, logits.dtype), (-1,))))
        return ops.mean(ops.square(logits - ops.cast(labels, logits.dtype)))
    if problem_type == "single_label_classification":
        return cross_entropy(ops.reshape(logits, (-1, num_labels)), ops.reshape(labels, (-1,)))
    return ops.mean(ops.binary_crossentropy(ops.cast(labels, logits.dtype), logits, from_logits=True))


def distillation_loss(cls_logits: Any, distillation_logits: Any, labels: Any, teacher_logits: Any, distillation_type: str = "hard",
                      alpha: float = 0.5, tau: float = 1.0) -> Any:
    """The DeiT loss (Touvron et al. 2021, eq. 2 and 3); see :class:`deit.losses.DistillationLoss`."""
    check_distillation_settings(distillation_type, alpha, tau)
    base_loss = cross_entropy(cls_logits, labels)
    if distillation_type == "none":
        return base_loss
    if tuple(teacher_logits.shape) != tuple(distillation_logits.shape):
        raise ValueError(
            f"teacher_logits have shape {tuple(teacher_logits.shape)} but the distillation head gives "
            f"{tuple(distillation_logits.shape)}: teacher and student must predict the same classes"
        )
    teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, distillation_logits.dtype))
    if distillation_type == "soft":
        student = ops.log_softmax(distillation_logits / tau, axis=1)
        teacher = ops.log_softmax(teacher_logits / tau, axis=1)
        kl = ops.sum(ops.exp(teacher) * (teacher - student))
        distill = kl * (tau * tau) / ops.cast(ops.size(distillation_logits), kl.dtype)
    else:
        distill = cross_entropy(distillation_logits, ops.argmax(teacher_logits, axis=1))
    return (1 - alpha) * base_loss + alpha * distill
