"""The small-scale recipe of ``deit demo`` and ``benchmarks/distill_mnist5k.py`` (one place).

A convnet teacher and a small DeiT student on the built-in mnist5k data (4,000 training and 1,000
validation digits of 28 x 28 px), sized for one CPU thread: a student epoch takes 7-10 s of an
idle core (4-5 min for the 30 epochs; ``deit demo`` trains its two students side by side). Every
setting was measured on this data (the ablation is in BENCHMARKS.md, "Distillation on mnist5k");
where it differs from the ImageNet recipe of Touvron et al. (2021), and why:

- **patch 7, not 16 (and not 4)**: 28 px digits give a 4 x 4 grid of 16 patch tokens. Patch 4
  (49 tokens) costs 2.4x more per step and learned slower per step too: it sat on a 25-30 %
  plateau for 5+ epochs that patch 7 leaves after 2-3.
- **4 blocks x 96 wide, 3 heads, MLP ratio 2** (DeiT-Ti: 12 x 192, ratio 4): fast enough for
  CPU minutes; a 192-wide student learned no faster per step, a 64-wide one ended lower (92.6
  against 95.4 %). No stochastic depth: with 0.1 the seed-1 student ended at 95.4 % against
  95.2 % without, within the spread of seeds, so it does not earn a setting.
- **batch 16, peak lr 1e-3**: the ImageNet run's peak (5e-4 x 1024/512) at 1/64 of its batch,
  so the base lr is 3.2e-2 per 512 images rather than 5e-4 (linear scaling would give 1.6e-5,
  far too slow). Early on the student is limited by its number of steps, so a small batch, with
  more of them per epoch, learns faster (batch 128 was slower per epoch at both lrs tried); peak 3e-3 was no better, 6e-3
  slower.
- **warm-up 0.5 epochs, per-step cosine** (ImageNet: 5 epochs, per epoch): 125 warm-up steps
  are enough for AdamW's moments; a 1-3 epoch warm-up only delays the take-off.
- **30 epochs, and the student is the moving average of its weights (EMA decay 0.998)**
  (ImageNet: 300 epochs, decay 0.99996 over 375,000 steps): by epoch 20-30 the training loss
  is near its floor under label smoothing and the validation accuracy of the weights moves
  by 0.3-1 point from epoch to epoch; the average over the last ~500 steps (a half-life of 1.4
  epochs) removes most of that (seed 1: 94.9 % for the last weights, 95.2 % for the average).
  20 epochs ended 0.1-0.5 points below 95 % on three seeds of five.
- **gentle crops: random resized crop scale (0.85, 1), evaluation of the whole image** (crop 1:
  the training crops barely zoom, so the evaluation must not zoom either)
  (ImageNet: scale (0.08, 1), crop 0.875, horizontal flips, RandAugment, random erasing,
  mixup/cutmix, repeated augmentation): a digit must stay whole and unflipped to keep its
  label; scale 0.6 cut strokes and slowed learning; RandAugment (even m5) held the student
  below 50 % for 4 epochs. Label smoothing 0.1 and weight decay 0.05 stay.
- **PyTorch's own kernels** (``fast_kernels="off"``, where ``auto`` could put the Linear layers
  on oneDNN): at 96 wide and 18 tokens the matmuls are too small for the oneDNN
  autograd path to pay; it was slower (120 steps: 7.4 s against 5.9 s, alternated 3 times).
- **teacher**: :class:`~deit.demo.teacher.SmallConvNet`, trained by the same engine on the same
  images and augmentation for ``TEACHER_EPOCHS`` (:func:`teacher_config`: AdamW, a per-step cosine
  without warm-up, cross-entropy): 98.5 %, 3 epochs gave 97.8 %.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from ..train.engine import ClassifierTrainer, fit, run_trainer
from ..train.epoch_order import seed_everything
from ..train.loaders import build_datasets
from ..train.optim import REFERENCE_BATCH_SIZE, scaled_lr
from ..train.recipe import TrainConfig
from .teacher import SmallConvNet

MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)
STUDENT_EPOCHS = 30
EMA_DECAY = 0.998
TEACHER_EPOCHS = 10
# Few labels, the rest unlabelled (deit demo, benchmarks/distill_mnist5k.py): 40 labelled images
# per class of the 400, the teacher trained on those 400 images for 25 epochs (1/4 of its full-data
# steps: 10 epochs gave 93 %). The student takes SEMI_EPOCHS passes over all 4,000 training images
# (labelled and unlabelled mixed), a third of the full-data run's steps, so that the demo's two
# students fit its 10 minutes; a student without the unlabelled images gets the same steps.
SEMI_LABELS_PER_CLASS = 40
SEMI_EPOCHS = 10
SEMI_TEACHER_EPOCHS = 25


def student_config(output: str, distillation_type: str, *, epochs: int = STUDENT_EPOCHS, seed: int = 0, num_workers: int = 0,
                   progress: bool = False) -> TrainConfig:
    """The student's run: see the module docstring for why each setting is what it is."""
    return TrainConfig(
        model="deit-tiny-distilled-patch16-224", image_size=28, patch_size=7, hidden_size=96, depth=4, heads=3, mlp_ratio=2.0,
        drop_path=0.0, data="mnist5k", num_workers=num_workers, mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0,
        epochs=epochs, batch_size=16, lr=3.2e-2, warmup_epochs=0.5, lr_per_step=True, min_lr=1e-5, weight_decay=0.05,
        smoothing=0.1, mixup=0.0, cutmix=0.0, aa=None, reprob=0.0, hflip=0.0, scale=(0.85, 1.0), color_jitter=0.0,
        repeated_aug=False, model_ema=True, model_ema_decay=EMA_DECAY, distillation_type=distillation_type,
        teacher="SmallConvNet" if distillation_type != "none" else None,
        output=output, seed=seed, progress=progress, save_hf_every_epoch=False, fast_kernels="off",
        overwrite=True,  # the demo's and the benchmarks' own folders: each call makes them again
    )


def describe_recipe(config: TrainConfig | None = None, teacher_epochs: int = TEACHER_EPOCHS) -> str:
    """One line naming the student, its budget and the teacher (for reports)."""
    c = config or student_config("unused", "none")
    grid = c.image_size // c.patch_size
    return (
        f"student DeiT {c.depth} blocks x {c.hidden_size} wide, {c.heads} heads, MLP ratio {c.mlp_ratio:g}, patch {c.patch_size} on "
        f"{c.image_size} px ({grid * grid} patch tokens), batch {c.batch_size}, AdamW peak lr {scaled_lr(c.lr, c.batch_size):.1e}, "
        f"warm-up {c.warmup_epochs:g} epochs then per-step cosine, weight decay {c.weight_decay:g}, label smoothing {c.smoothing:g}, "
        f"random resized crop scale {c.scale}; teacher SmallConvNet, {teacher_epochs} epochs"
    )


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """mnist5k with the recipe's training and evaluation transforms."""
    return build_datasets(config, config.image_size)


class ClassBalancedSubset(Subset):
    """The first ``per_class`` images of every class, in the data set's order (the images
    ``labels_per_class`` keeps labelled).

    Fixed and independent of the seed, so every seed and every distillation type sees the same
    images. Keeps ``.classes`` and ``.targets``, which the training engine reads.
    """

    def __init__(self, dataset: Dataset, per_class: int) -> None:
        from ..train.partial_labels import first_per_class

        targets: list[int] = list(dataset.targets)
        self.classes = list(dataset.classes)
        indices, _ = first_per_class(targets, self.classes, per_class, repr(dataset))
        super().__init__(dataset, indices)
        self.targets = [targets[i] for i in indices]


class Repeated(ConcatDataset):
    """A data set repeated ``times`` times per epoch (each time with fresh augmentation): the
    labelled images of a run without the unlabelled ones, given the steps of one with them."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        super().__init__([dataset] * times)
        self.classes = list(dataset.classes)
        self.targets = list(dataset.targets) * times


def labels_only_data(train_set: Dataset, labels_per_class: int) -> Repeated:
    """The first ``labels_per_class`` images of each class, repeated to about ``len(train_set)``
    per epoch: the same steps per epoch as a partly labelled run over all of ``train_set``."""
    labelled = ClassBalancedSubset(train_set, labels_per_class)
    return Repeated(labelled, max(1, len(train_set) // len(labelled)))


@dataclass
class TeacherRun:
    model: nn.Module  # in eval mode
    acc1: float
    seconds: float
    step_losses: list[float]  # the training loss of each optimizer step


# The convnet teacher's recipe: AdamW at 3e-3 (per step, at any batch), weight decay 1e-4, batch 64,
# a per-step cosine from the peak to 0 without warm-up, plain cross-entropy, the student's augmentation.
TEACHER_LR = 3e-3
TEACHER_WEIGHT_DECAY = 1e-4
TEACHER_BATCH_SIZE = 64
# The engine validates, checkpoints and draws the curves after every epoch: after each pass over a
# few hundred labelled images (6 steps at 40 per class) that cost more than the pass itself (the
# teacher's training took 2.4x as long at 40 per class, 7x at 10), so an epoch of the teacher's run
# is as many passes as fit in this many images (and divide the passes asked for).
TEACHER_EPOCH_IMAGES = 2000


def teacher_config(output: str, *, epochs: int, seed: int, batch_size: int = TEACHER_BATCH_SIZE, progress: bool = False) -> TrainConfig:
    """The teacher's run in the engine (deit.train.engine.ClassifierTrainer); its data sets are given, already transformed."""
    return TrainConfig(
        model=SmallConvNet.__name__, image_size=28, mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0, num_workers=0,
        epochs=epochs, batch_size=batch_size, lr=TEACHER_LR * REFERENCE_BATCH_SIZE / batch_size,  # the engine scales by batch / 512
        warmup_epochs=0.0, lr_per_step=True, min_lr=0.0, weight_decay=TEACHER_WEIGHT_DECAY, smoothing=0.0, mixup=0.0, cutmix=0.0,
        repeated_aug=False, model_ema=False, output=output, seed=seed, progress=progress, save_hf_every_epoch=False,
        overwrite=True,  # the demo's and the benchmarks' own folders: each call makes them again
    )


def passes_per_epoch(passes: int, images: int) -> int:
    """How many passes over the teacher's ``images`` make one epoch of its run: the most that divide
    ``passes`` and fit in ``TEACHER_EPOCH_IMAGES`` images (at least one)."""
    return max(group for group in range(1, passes + 1) if passes % group == 0 and (group == 1 or group * images <= TEACHER_EPOCH_IMAGES))


def train_teacher(train_set: Dataset, val_set: Dataset, *, num_classes: int, output: str, epochs: int = TEACHER_EPOCHS, seed: int = 0,
                  progress: bool = False) -> TeacherRun:
    """Train the demo's convnet teacher for ``epochs`` passes over ``train_set`` in the engine (its
    recipe: :func:`teacher_config`; the passes grouped into epochs by :func:`passes_per_epoch`);
    ``output`` gets the run's files (``last/model.safetensors``, metrics, curves)."""
    start = time.perf_counter()
    seed_everything(seed)
    model = SmallConvNet(num_classes=num_classes, in_channels=3)
    group = passes_per_epoch(epochs, len(train_set))
    if group > 1:
        print(f"teacher: {epochs} passes over its {len(train_set)} images, {group} to an epoch of the run", flush=True)
    config = teacher_config(output, epochs=epochs // group, seed=seed, batch_size=min(TEACHER_BATCH_SIZE, len(train_set)), progress=progress)
    data = Repeated(train_set, group) if group > 1 else train_set
    result = run_trainer(ClassifierTrainer, config, train_dataset=data, val_dataset=val_set, model=model)
    return TeacherRun(result.model.eval(), result.final_metrics["val_acc1"], time.perf_counter() - start, result.step_losses)


def train_student_quietly(config: TrainConfig, per_class: tuple[int, int] | None = None, labels_per_class: int | None = None,
                          threads: int = 1) -> dict[str, Any]:
    """A no-teacher student run without a progress bar, for a worker process beside the one that
    trains the distilled student (``deit demo``): its head accuracies, history and seconds.
    ``per_class``: (training, validation) images per class, for a class-balanced slice;
    ``labels_per_class``: train on that many labelled images per class (:func:`labels_only_data`)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train_set, val_set = load_data(config)
    if per_class is not None:
        train_set, val_set = ClassBalancedSubset(train_set, per_class[0]), ClassBalancedSubset(val_set, per_class[1])
    if labels_per_class is not None:
        train_set = labels_only_data(train_set, labels_per_class)
    result = fit(dataclasses.replace(config, progress=False), train_dataset=train_set, val_dataset=val_set)
    return {"accuracies": head_accuracies(result.final_metrics), "history": result.history, "seconds": time.perf_counter() - start}


def head_accuracies(metrics: dict[str, Any]) -> dict[str, float]:
    """CLS, DIST and averaged-heads top-1 of a run's last epoch: of the weights' moving average
    when the run keeps one (the recipe's student), else of the weights."""
    prefix = "ema_" if "ema_acc1" in metrics else "val_"
    return {"cls": metrics.get(f"{prefix}acc1_cls", math.nan), "dist": metrics.get(f"{prefix}acc1_dist", math.nan),
            "avg": metrics[f"{prefix}acc1"]}
