"""Training on partly labelled data: a few labelled images, many without labels, and a teacher.

``TrainConfig.labels_per_class = N`` keeps the first N labelled images of each class of the
training split (in the data set's order: the same images for every seed) and moves the rest into
the unlabelled pool; ``TrainConfig.unlabeled`` adds the images of another source (a folder
searched recursively, or ``hf:PATH`` whose labels, if any, are ignored). The run's training set
is then :class:`PartlyLabelled`: the labelled images followed by the unlabelled ones, whose label
is :data:`UNLABELLED` (-1). A ``train_dataset`` passed to ``fit`` may mark images the same way
(label -1, listed in its ``.targets``).

One epoch is one pass over all of them, shuffled together, so a batch holds labelled and
unlabelled images in their natural proportion (40 labelled of 400 images per class: one in ten).
Both kinds go through the same augmentation, and the teacher scores the very view the student
sees. The loss is the DeiT loss with the label's term dropped where there is no label:

    (1 - alpha) * CE(CLS head, label)   [labelled images only]  +  alpha * D(DIST head, teacher)

averaged over the batch, with D the hard or soft distillation term (soft: the KL per image,
``distillation_kl_reduction="batchmean"``, unless the run sets it). Mixup and cutmix mix an
unlabelled image's empty target like any other, so a mixed target weighs the label term by the
labelled share of the mix. With ``unlabeled_cls_teacher`` the CLS head also learns the
teacher's hard label where the label is missing.

Why these defaults (mnist5k, 40 labels per class, ``benchmarks/distill_mnist5k.py``; BENCHMARKS.md,
"Distillation on mnist5k"): with the natural mix, hard distillation beats the labels alone by
+5.2 ± 1.0 points over 5 seeds at the same steps. Soft distillation with the authors' scaling
(the KL averaged over batch x classes, ten times weaker than per image at 10 classes) learned
the unlabelled images too slowly: 69.0 % against 82.8 % for the labels alone (3 seeds, still
rising at the end); with the KL per image, as Hinton et al. and timm scale it, 89.1 %
(+20.1 ± 1.1 points, paired), above hard distillation's 88.1 %. So a run with images without
labels averages it per image. A fixed larger share of labelled images per
batch was not measured: each labelled image already comes back 10 times as often in the
labels-only run, which saturates (its accuracy flattens by epoch 8 of 10). The CLS head on the
teacher's labels added +2.63 ± 1.90 points over hard distillation (3 seeds, averaged heads: not
beyond 2 SE; -0.7 in a 15-epoch prototype), so it stays an option and the CLS head keeps learning
the labels only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from .transforms import smoothed_one_hot

UNLABELLED = -1  # the label of an image without one


def first_per_class(targets: Sequence[int], classes: Sequence[str], per_class: int, source: str) -> tuple[list[int], list[int]]:
    """``(kept, rest)``: the indices of the first ``per_class`` images of each class, and the others.

    Raises ValueError naming the class (and ``source``) that has no image or fewer than ``per_class``.
    """
    taken = [0] * len(classes)
    kept, rest = [], []
    for index, target in enumerate(targets):
        if target >= 0 and taken[target] < per_class:
            taken[target] += 1
            kept.append(index)
        else:
            rest.append(index)
    for name, count in zip(classes, taken):
        if count == 0:
            raise ValueError(f"{source}: class {name!r} has no labelled image, so keeping {per_class} per class "
                             "(--labels-per-class) would leave it without one; add images of it or remove the class")
        if count < per_class:
            raise ValueError(f"{source}: class {name!r} has only {count} labelled image(s), fewer than the {per_class} per "
                             f"class asked for (--labels-per-class); ask for at most {min(taken)}")
    return kept, rest


class PartlyLabelled(ConcatDataset):
    """Labelled images, then unlabelled ones: ``(image, label)`` items, label :data:`UNLABELLED` for the latter.

    ``labelled`` and each of ``unlabelled`` yield ``(image, label)``; the labels of ``unlabelled``
    are ignored. Keeps ``.classes`` and lists every item's label in ``.targets``.
    """

    def __init__(self, labelled: Dataset, unlabelled: Sequence[Dataset], classes: Sequence[str], labelled_targets: Sequence[int]) -> None:
        super().__init__([labelled, *unlabelled])
        self.classes = list(classes)
        self.num_labelled = len(labelled)
        self.num_unlabelled = len(self) - self.num_labelled
        self.targets = [int(t) for t in labelled_targets] + [UNLABELLED] * self.num_unlabelled
        # The data sets of image files behind the items (one taken apart into subsets counts once),
        # for the run's report of corrupt images (deit.train.data.count_corrupt, corrupt_files).
        bases = [part.dataset if isinstance(part, Subset) else part for part in self.datasets]
        self.sources = [base for i, base in enumerate(bases) if hasattr(base, "_corrupt") and all(base is not b for b in bases[:i])]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = super().__getitem__(index)
        return image, (int(label) if index < self.num_labelled else UNLABELLED)

    @property
    def _corrupt(self) -> torch.Tensor:
        return torch.cat([source._corrupt for source in self.sources]) if self.sources else torch.zeros(0, dtype=torch.uint8)

    @property
    def num_corrupt(self) -> int:
        return int(self._corrupt.sum())

    def corrupt_files(self) -> list[str]:
        return [name for source in self.sources for name in source.corrupt_files()]


def has_unlabelled(dataset: Dataset) -> bool:
    """Whether a training set marks some images as unlabelled (label -1 in its ``.targets``)."""
    return any(int(t) < 0 for t in getattr(dataset, "targets", ()))


def build_unlabelled_source(spec: str, transform: Callable) -> Dataset:
    """Every image of ``spec`` (a folder, searched recursively, or ``hf:PATH``), with ``transform``."""
    from .data import ALL_IMAGES, HF_PREFIX, MNIST5K_SPEC, HFDiskDataset, UnlabelledImageFolder, _is_hf_folder

    if spec == MNIST5K_SPEC:
        raise ValueError("--unlabeled mnist5k: to use mnist5k's own training images without their labels, "
                         "train on --data mnist5k with --labels-per-class N")
    if spec.startswith(HF_PREFIX):
        return HFDiskDataset(spec[len(HF_PREFIX):], ALL_IMAGES, transform, labelled=False)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--unlabeled {spec}: no such folder (expected a folder of images or hf:PATH)")
    if not path.is_dir():
        raise ValueError(f"--unlabeled {spec}: not a folder (expected a folder of images or hf:PATH)")
    if _is_hf_folder(path):
        return HFDiskDataset(path, ALL_IMAGES, transform, labelled=False)
    return UnlabelledImageFolder(path, ALL_IMAGES, transform)


def partly_labelled(train_set: Dataset, *, labels_per_class: int | None, unlabeled: str | None, use_rest: bool,
                    transform: Callable, source: str) -> Dataset:
    """The training set of a partly labelled run (see the module docstring).

    ``use_rest``: the images beyond ``labels_per_class`` join the unlabelled pool (a run with a
    teacher); otherwise they are left out and the run trains on the labelled images alone.
    """
    from .data import class_names

    classes = class_names(train_set)
    targets = [int(t) for t in getattr(train_set, "targets")]
    kept, rest = list(range(len(targets))), []
    if labels_per_class is not None:
        kept, rest = first_per_class(targets, classes, labels_per_class, source)
    unlabelled: list[Dataset] = [Subset(train_set, rest)] if rest and use_rest else []
    if unlabeled:
        unlabelled.append(build_unlabelled_source(unlabeled, transform))
    labelled = train_set if len(kept) == len(targets) else Subset(train_set, kept)
    return PartlyLabelled(labelled, unlabelled, classes, [targets[i] for i in kept])


def with_teacher_labels(targets: torch.Tensor, teacher_logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft targets whose missing mass (unlabelled images, and their share of a mix) goes to the
    teacher's hard label, smoothed as the labels are."""
    missing = (1.0 - targets.sum(-1, keepdim=True)).clamp(min=0.0)
    hard = smoothed_one_hot(teacher_logits.argmax(-1), targets.shape[-1], smoothing).to(targets.dtype)
    return targets + missing * hard
