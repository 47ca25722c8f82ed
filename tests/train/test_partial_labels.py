"""Partly labelled training (deit.train.partial_labels): a few labelled images, the others learned
from the teacher only. The loss is checked against the DeiT loss written out by hand; the data
split, the errors, and what the teacher sees are checked on tiny runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fit_helpers import (  # noqa: F401 (one_thread: autouse fixture)
    CLASSES, LABELS_PER_CLASS, ColourImages, ColourTeacher, datasets, one_thread, tiny_config, tiny_partly_labelled_config,
)
from PIL import Image

from deit.train.distributed import DistributedContext
from deit.train.engine import Trainer, fit
from deit.train.epoch_order import seed_sample
from deit.train.partial_labels import UNLABELLED, build_unlabelled_source, first_per_class

ALPHA, SMOOTHING = 0.5, 0.1
CLASSES_COUNT = len(CLASSES)


def trainer_for(config, teacher=None, train_set=None) -> Trainer:
    train, val = datasets()
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return Trainer(config, context, teacher=teacher, train_set=train_set or train, val_set=val)


def write_images(folder, count: int) -> None:
    for index in range(count):
        path = folder / f"part{index % 2}" / f"image{index}.png"  # sub-folders: searched recursively
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), color=(40 * index % 256, 90, 200)).save(path)


# ------------------------------------------------------------------------------ the data
def test_labels_per_class_keeps_the_first_images_of_each_class_and_the_rest_without_labels(tmp_path):
    train_set, _ = datasets()
    trainer = trainer_for(tiny_partly_labelled_config(str(tmp_path)), teacher=ColourTeacher())
    data = trainer.data.train_set
    kept, rest = first_per_class(train_set.targets, CLASSES, LABELS_PER_CLASS, "colours")
    first = [i for c in range(3) for i in [j for j, t in enumerate(train_set.targets) if t == c][:LABELS_PER_CLASS]]
    assert kept == sorted(first)  # the first of each class, in the data set's order
    assert len(data) == len(train_set) and data.num_labelled == 3 * LABELS_PER_CLASS
    assert data.targets == [train_set.targets[i] for i in kept] + [UNLABELLED] * len(rest)
    # The same augmented image as the source item at the same seed, with the label or -1.
    for position, source_index in ((0, kept[0]), (len(kept), rest[0])):
        seed_sample(3)
        image, label = data[position]
        seed_sample(3)
        expected, expected_label = train_set[source_index]
        assert torch.equal(image, expected)
        assert label == (expected_label if position < len(kept) else UNLABELLED)


def test_labels_per_class_without_a_teacher_trains_on_the_labelled_images_only(tmp_path):
    trainer = trainer_for(tiny_config(str(tmp_path), labels_per_class=LABELS_PER_CLASS, batch_size=2))
    assert len(trainer.data.train_set) == 3 * LABELS_PER_CLASS and not trainer.unlabelled


def test_unlabeled_folder_adds_every_image_under_it_with_the_training_transform(tmp_path):
    write_images(tmp_path / "extra", 5)
    transform = lambda image: torch.full((1,), float(image.size[0]))  # noqa: E731
    source = build_unlabelled_source(str(tmp_path / "extra"), transform)
    assert len(source) == 5 and torch.equal(source[0][0], torch.tensor([20.0]))
    # In a run: the labelled data set whole, then the five images without labels.
    config = tiny_config(str(tmp_path / "run"), unlabeled=str(tmp_path / "extra"), teacher="<module>")
    data = trainer_for(config, teacher=ColourTeacher()).data.train_set
    assert data.num_labelled == 64 and data.num_unlabelled == 5 and data.targets[-5:] == [UNLABELLED] * 5
    assert data[64][0].shape == data[0][0].shape == (3, 16, 16) and data[64][1] == UNLABELLED


def test_unlabeled_hf_dataset_without_a_label_column(tmp_path):
    datasets_library = pytest.importorskip("datasets")
    images = [Image.new("RGB", (8, 8), color=(i * 30, 0, 0)) for i in range(7)]
    datasets_library.Dataset.from_dict({"image": images}).save_to_disk(str(tmp_path / "hf"))
    source = build_unlabelled_source(f"hf:{tmp_path / 'hf'}", None)
    assert len(source) == 7  # every row: no held-out split


# ------------------------------------------------------------------------------ errors
def test_unlabeled_without_a_teacher_names_the_missing_teacher(tmp_path):
    with pytest.raises(ValueError, match=r"--unlabeled .* needs a teacher \(--teacher\)"):
        fit(tiny_config(str(tmp_path), unlabeled=str(tmp_path)))
    with pytest.raises(ValueError, match="needs hard or soft distillation"):
        fit(tiny_config(str(tmp_path), unlabeled=str(tmp_path), teacher="<module>", distillation_type="none"))
    # Images marked unlabelled in a data set passed to fit need a teacher just the same.
    train_set, val_set = datasets()
    train_set.labels[:5] = UNLABELLED
    with pytest.raises(ValueError, match=r"without labels \(label -1\): they need a teacher"):
        fit(tiny_config(str(tmp_path)), train_dataset=train_set, val_dataset=val_set)


def test_an_empty_unlabeled_folder_is_named(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    config = tiny_config(str(tmp_path / "run"), unlabeled=str(tmp_path / "empty"), teacher="<module>")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'empty'}: no images"):
        trainer_for(config, teacher=ColourTeacher())
    with pytest.raises(FileNotFoundError, match="no-such-folder: no such folder"):
        build_unlabelled_source(str(tmp_path / "no-such-folder"), None)


def test_labels_per_class_larger_than_a_class_names_the_class(tmp_path):
    train_set, _ = datasets()
    smallest = min(range(3), key=train_set.targets.count)
    count = train_set.targets.count(smallest)
    with pytest.raises(ValueError, match=rf"class '{CLASSES[smallest]}' has only {count} labelled image\(s\), fewer than the {count + 1}"):
        trainer_for(tiny_partly_labelled_config(str(tmp_path), labels_per_class=count + 1), teacher=ColourTeacher())


def test_a_class_left_without_a_labelled_image_is_named(tmp_path):
    class NoBlue(ColourImages):
        """The blue images are there, but none of them carries its label."""

        @property
        def targets(self) -> list[int]:
            return [UNLABELLED if t == 2 else t for t in self.labels.tolist()]

    with pytest.raises(ValueError, match="class 'blue' has no labelled image"):
        trainer_for(tiny_partly_labelled_config(str(tmp_path)), teacher=ColourTeacher(), train_set=NoBlue(64, seed=1))


# ------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("cls_teacher", [False, True])
def test_loss_is_the_deit_loss_without_the_label_term_where_there_is_no_label(tmp_path, cls_teacher):
    config = tiny_partly_labelled_config(str(tmp_path), unlabeled_cls_teacher=cls_teacher, smoothing=SMOOTHING, distillation_alpha=ALPHA)
    trainer = trainer_for(config, teacher=ColourTeacher())
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, UNLABELLED, 2, UNLABELLED, UNLABELLED, 1])
    loss = trainer._loss(images, labels)

    outputs = trainer.model(images)
    teacher_labels = ColourTeacher()(images).argmax(-1)
    labelled = labels >= 0
    cls_targets = torch.where(labelled, labels, teacher_labels)
    per_image = F.cross_entropy(outputs.cls_logits, cls_targets, label_smoothing=SMOOTHING, reduction="none")
    cls_term = (per_image if cls_teacher else per_image * labelled).sum() / len(labels)
    dist_term = F.cross_entropy(outputs.distillation_logits, teacher_labels)
    torch.testing.assert_close(loss, (1 - ALPHA) * cls_term + ALPHA * dist_term, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", [None, "mean"])
def test_soft_distillation_on_unlabelled_images_averages_the_kl_per_image_by_default(tmp_path, reduction):
    # Averaged over batch x classes (the authors' "mean"), the teacher's term was too weak to learn
    # from the unlabelled images (partial_labels' docstring): per image ("batchmean") unless set.
    config = tiny_partly_labelled_config(str(tmp_path), distillation_type="soft", distillation_kl_reduction=reduction,
                                         smoothing=0.0, distillation_alpha=ALPHA)
    trainer = trainer_for(config, teacher=ColourTeacher())
    assert trainer.criterion.distillation.kl_reduction == (reduction or "batchmean")
    images = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([1, UNLABELLED, UNLABELLED, 0])
    loss = trainer._loss(images, labels)

    outputs = trainer.model(images)
    labelled = labels >= 0
    cls_term = (F.cross_entropy(outputs.cls_logits, labels.clamp(min=0), reduction="none") * labelled).sum() / len(labels)
    kl = F.kl_div(F.log_softmax(outputs.distillation_logits, -1), F.log_softmax(ColourTeacher()(images), -1), reduction="sum", log_target=True)
    averaged_over = len(labels) * (CLASSES_COUNT if reduction == "mean" else 1)
    torch.testing.assert_close(loss, (1 - ALPHA) * cls_term + ALPHA * kl / averaged_over, rtol=1e-5, atol=1e-6)


def test_only_unlabelled_images_train_the_dist_head_alone(tmp_path):
    trainer = trainer_for(tiny_partly_labelled_config(str(tmp_path)), teacher=ColourTeacher())
    trainer._loss(torch.randn(4, 3, 16, 16), torch.full((4,), UNLABELLED)).backward()
    assert trainer.model.cls_classifier.weight.grad is None or not trainer.model.cls_classifier.weight.grad.any()
    assert trainer.model.distillation_classifier.weight.grad.abs().sum() > 0


def test_the_teacher_scores_the_view_the_student_sees(tmp_path):
    class Recording(ColourTeacher):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            self.seen.append(pixel_values.clone())
            return super().forward(pixel_values)

    teacher = Recording()
    student_inputs: list[torch.Tensor] = []
    config = tiny_partly_labelled_config(str(tmp_path), epochs=1, mixup=0.8, cutmix=1.0)
    trainer = trainer_for(config, teacher=teacher)
    trainer.model.register_forward_pre_hook(lambda module, args: student_inputs.append(args[0].clone()) if module.training else None)
    trainer.run()
    training_calls = teacher.seen[1:]  # the first call checks the teacher's class count on a validation image
    assert len(training_calls) == len(student_inputs) == 64 // 8
    assert all(torch.equal(a, b) for a, b in zip(training_calls, student_inputs))
