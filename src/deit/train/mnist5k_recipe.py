"""The small-scale recipe of ``deit demo`` and ``benchmarks/distill_mnist5k.py``.

A convnet teacher and a small DeiT student on the built-in mnist5k data (28 x 28 digits),
sized to finish on two CPU cores in minutes. The recipe keeps the paper's ingredients where
they help at this scale (AdamW, warm-up + cosine, label smoothing, random resized crops, the
distillation token) and leaves out those that need long runs to pay off (RandAugment, random
erasing, mixup/cutmix, repeated augmentation, EMA); digits are never flipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .epoch_order import seed_everything
from .loaders import build_datasets
from .recipe import TrainConfig

MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)


def student_config(output: str, distillation_type: str, *, epochs: int = 20, seed: int = 0, num_workers: int = 0,
                   progress: bool = False) -> TrainConfig:
    return TrainConfig(
        model="deit-tiny-distilled-patch16-224", image_size=28, patch_size=4, hidden_size=96, depth=4, heads=3, mlp_ratio=2.0,
        drop_path=0.0, data="mnist5k", num_workers=num_workers, mean=MNIST_MEAN, std=MNIST_STD,
        epochs=epochs, batch_size=32, lr=3.2e-2, warmup_epochs=1, lr_per_step=True, min_lr=1e-5, weight_decay=0.05,
        smoothing=0.1, mixup=0.0, cutmix=0.0, aa=None, reprob=0.0, hflip=0.0, scale=(0.6, 1.0), color_jitter=0.0,
        repeated_aug=False, model_ema=False, distillation_type=distillation_type,
        teacher="SmallConvNet" if distillation_type != "none" else None,
        output=output, seed=seed, progress=progress, save_hf_every_epoch=False,
    )


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """mnist5k with the recipe's training and evaluation transforms."""
    return build_datasets(config, config.image_size)


class ClassBalancedSubset(Subset):
    """The first ``per_class`` images of every class, in the data set's order.

    Fixed and independent of the seed, so every seed and every distillation type sees the same
    images. Keeps ``.classes`` and ``.targets``, which the training engine reads.
    """

    def __init__(self, dataset: Dataset, per_class: int) -> None:
        targets: list[int] = list(dataset.targets)
        self.classes = list(dataset.classes)
        taken = [0] * len(self.classes)
        indices = []
        for index, target in enumerate(targets):
            if taken[target] < per_class:
                taken[target] += 1
                indices.append(index)
        short = [self.classes[c] for c, n in enumerate(taken) if n < per_class]
        if short:
            raise ValueError(f"{dataset!r}: fewer than {per_class} images in class(es) {', '.join(short)}")
        super().__init__(dataset, indices)
        self.targets = [targets[i] for i in indices]


@torch.no_grad()
def logits_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 (%) of a model that returns a logits tensor (the convnet teacher)."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(images).argmax(-1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / total


@dataclass
class TeacherRun:
    model: nn.Module
    acc1: float
    seconds: float


def train_teacher(train_set: Dataset, val_set: Dataset, *, num_classes: int, epochs: int = 3, seed: int = 0, lr: float = 3e-3, batch_size: int = 64) -> TeacherRun:
    """Train the demo's convnet teacher: AdamW, one-cycle cosine, cross-entropy."""
    from .teacher import SmallConvNet

    start = time.perf_counter()
    seed_everything(seed)
    model = SmallConvNet(num_classes=num_classes, in_channels=3)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    total_steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return TeacherRun(model, logits_accuracy(model, val_set), time.perf_counter() - start)


def head_accuracies(metrics: dict[str, Any]) -> dict[str, float]:
    """CLS, DIST and averaged-heads top-1 of a run's last epoch."""
    return {"cls": metrics.get("val_acc1_cls", math.nan), "dist": metrics.get("val_acc1_dist", math.nan), "avg": metrics["val_acc1"]}
