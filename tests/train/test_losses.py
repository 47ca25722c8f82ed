"""The DeiT losses against values computed by hand (plain ``math`` on the same numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from deit.losses import DistillationLoss, LabelSmoothingCrossEntropy, StudentCriterion
from deit.outputs import DeiTForImageClassificationWithTeacherOutput, ImageClassifierOutput

TOL = dict(rtol=0, atol=1e-6)

# Two samples, three classes.
CLS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
DIST = [[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]]
TEACHER = [[3.0, 0.0, 1.0], [0.0, 0.0, 4.0]]  # argmax: 0, 2
LABELS = [0, 1]


def log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(v) for v in row))
    return [v - norm for v in row]


def ce(row: list[float], label: int) -> float:
    return -log_softmax(row)[label]


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def base_ce() -> float:
    return (ce(CLS[0], 0) + ce(CLS[1], 1)) / 2


def test_label_smoothing_cross_entropy_by_hand():
    eps = 0.1
    expected = sum((1 - eps) * ce(row, y) + eps * sum(-lp for lp in log_softmax(row)) / 3 for row, y in zip(CLS, LABELS)) / 2
    got = LabelSmoothingCrossEntropy(eps)(t(CLS), torch.tensor(LABELS))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), **TOL)


def test_soft_targets_cross_entropy_by_hand():
    target = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]  # e.g. two mixed-up labels
    expected = sum(-sum(p * lp for p, lp in zip(tr, log_softmax(row))) for row, tr in zip(CLS, target)) / 2
    # Smoothing applies to index targets only: soft targets already carry theirs.
    got = LabelSmoothingCrossEntropy(0.1)(t(CLS), t(target))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), **TOL)


def test_none_is_the_base_loss_on_the_cls_head():
    loss = DistillationLoss("none")(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    torch.testing.assert_close(loss, torch.tensor(base_ce(), dtype=torch.float64), **TOL)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_hard_distillation_by_hand(alpha):
    teacher_labels = [0, 2]
    dist_ce = (ce(DIST[0], teacher_labels[0]) + ce(DIST[1], teacher_labels[1])) / 2
    expected = (1 - alpha) * base_ce() + alpha * dist_ce
    loss = DistillationLoss("hard", alpha=alpha)(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_by_hand(tau):
    alpha = 0.5
    kl_sum = 0.0
    for student_row, teacher_row in zip(DIST, TEACHER):
        log_p_s = log_softmax([v / tau for v in student_row])
        log_p_t = log_softmax([v / tau for v in teacher_row])
        kl_sum += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_p_t, log_p_s))
    # Summed over all elements, times tau^2, divided by the number of logits (2 x 3), as the authors do.
    expected = (1 - alpha) * base_ce() + alpha * kl_sum * tau * tau / 6
    loss = DistillationLoss("soft", alpha=alpha, tau=tau)(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), **TOL)


def test_soft_distillation_averaged_per_image():
    # "batchmean": the summed KL divided by the number of images (2), not of logits (2 x 3).
    mean = DistillationLoss("soft", alpha=1.0)(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    batchmean = DistillationLoss("soft", alpha=1.0, kl_reduction="batchmean")(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    kl_sum = sum(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_softmax(teacher_row), log_softmax(student_row)))
                 for student_row, teacher_row in zip(DIST, TEACHER))
    torch.testing.assert_close(batchmean, torch.tensor(kl_sum / 2, dtype=torch.float64), **TOL)
    torch.testing.assert_close(mean, torch.tensor(kl_sum / 6, dtype=torch.float64), **TOL)


def test_hard_distillation_with_mixup_targets():
    target = [[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]
    base = sum(-sum(p * lp for p, lp in zip(tr, log_softmax(row))) for row, tr in zip(CLS, target)) / 2
    dist_ce = (ce(DIST[0], 0) + ce(DIST[1], 2)) / 2
    loss = DistillationLoss("hard", alpha=0.5)(t(CLS), t(DIST), t(target), t(TEACHER))
    torch.testing.assert_close(loss, torch.tensor(0.5 * base + 0.5 * dist_ce, dtype=torch.float64), **TOL)


def test_distillation_gets_no_gradient_into_the_teacher():
    teacher = t(TEACHER).requires_grad_()
    dist = t(DIST).requires_grad_()
    DistillationLoss("soft")(t(CLS), dist, torch.tensor(LABELS), teacher).backward()
    assert teacher.grad is None and dist.grad is not None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="distillation_type"):
        DistillationLoss("medium")
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss("hard", alpha=1.5)
    with pytest.raises(ValueError, match="tau"):
        DistillationLoss("soft", tau=0)
    with pytest.raises(ValueError, match="kl_reduction"):
        DistillationLoss("soft", kl_reduction="sum")
    with pytest.raises(ValueError, match="teacher_logits"):
        DistillationLoss("hard")(t(CLS), t(DIST), torch.tensor(LABELS), None)
    with pytest.raises(ValueError, match="same classes"):
        DistillationLoss("hard")(t(CLS), t(DIST), torch.tensor(LABELS), torch.zeros(2, 5, dtype=torch.float64))


def test_student_criterion_without_teacher_trains_both_heads_on_the_labels():
    outputs = DeiTForImageClassificationWithTeacherOutput(cls_logits=t(CLS), distillation_logits=t(DIST))
    expected = (base_ce() + (ce(DIST[0], 0) + ce(DIST[1], 1)) / 2) / 2
    loss = StudentCriterion(LabelSmoothingCrossEntropy())(outputs, torch.tensor(LABELS))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32), **TOL)


def test_student_criterion_with_teacher_is_the_distillation_loss():
    outputs = DeiTForImageClassificationWithTeacherOutput(cls_logits=t(CLS), distillation_logits=t(DIST))
    criterion = StudentCriterion(LabelSmoothingCrossEntropy(), DistillationLoss("hard"))
    expected = DistillationLoss("hard")(t(CLS), t(DIST), torch.tensor(LABELS), t(TEACHER))
    torch.testing.assert_close(criterion(outputs, torch.tensor(LABELS), t(TEACHER)), expected.float(), **TOL)


def test_student_criterion_single_head():
    loss = StudentCriterion(LabelSmoothingCrossEntropy())(ImageClassifierOutput(logits=t(CLS)), torch.tensor(LABELS))
    torch.testing.assert_close(loss, torch.tensor(base_ce(), dtype=torch.float32), **TOL)
    with pytest.raises(ValueError, match="distillation token"):
        StudentCriterion(LabelSmoothingCrossEntropy(), DistillationLoss("hard"))(ImageClassifierOutput(logits=t(CLS)), torch.tensor(LABELS), t(TEACHER))
