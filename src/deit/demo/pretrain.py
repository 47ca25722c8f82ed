"""Pre-training without labels, then fine-tuning on few: the comparison of ``deit demo --pretrain`` and
``benchmarks/pretrain_mnist5k.py``.

1. SimMIM pre-training of the demo's student (``deit.demo.recipe.student_config``, on 7 px patches)
   on all mnist5k training images, labels unused;
2. fine-tuning it on 10 % of the training labels (the first 40 images of each class);
3. the same student trained from scratch on the same labelled images, with the same recipe and
   number of epochs as the fine-tuning.

SimMIM's default mask blocks (32 px on 16 px patches, 224 px images) do not fit 28 px digits. The
student here reads 7 px patches (16 tokens), not the distillation demo's 4 px ones (49 tokens):
a step costs about a third, so pre-training gets three times the steps in the same time (measured:
13 s instead of 42 s per pre-training epoch on 2 busy cores). Mask blocks are 7 px, one patch each:
10 of 16 masked per image (62.5 %, the nearest to SimMIM's 0.6; 14 px blocks would mask 3 of 4).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..train.engine import fit
from ..train.loaders import build_datasets
from ..train.pretrain_recipe import PretrainConfig
from ..train.pretraining import pretrain
from ..train.recipe import TrainConfig
from .recipe import ClassBalancedSubset, load_data, student_config

LABELLED_PER_CLASS = 40  # of about 400 training images per class: 10 % of the labels
PATCH_SIZE = 7
MASK_PATCH_SIZE = 7
PRETRAIN_BATCH_SIZE = 64
PRETRAIN_LR = 3.2e-2  # for a global batch of 512: a peak of 4e-3 at batch 64
# The student's architecture and input statistics; pre-training builds the same model.
_SHARED = ("model", "image_size", "patch_size", "hidden_size", "depth", "heads", "mlp_ratio", "mean", "std", "data", "fast_kernels")


def _student(output: str, **settings) -> TrainConfig:
    """The demo's student recipe without a teacher, on 7 px patches, judged by its last weights
    (no EMA: the comparison in BENCHMARKS.md, "SimMIM pre-training on mnist5k", was measured so)."""
    return dataclasses.replace(student_config(output, "none", **settings), patch_size=PATCH_SIZE, model_ema=False)


def pretrain_config(output: str, *, epochs: int, seed: int = 0, num_workers: int = 0, progress: bool = False) -> PretrainConfig:
    """SimMIM on mnist5k for the demo's student. Digits are never flipped; no stochastic depth at this size."""
    student = _student(output, epochs=epochs, seed=seed)
    return PretrainConfig(
        **{name: getattr(student, name) for name in _SHARED}, mask_patch_size=MASK_PATCH_SIZE, epochs=epochs,
        batch_size=PRETRAIN_BATCH_SIZE, lr=PRETRAIN_LR, warmup_epochs=min(1.0, epochs / 4), drop_path=0.0, hflip=0.0,
        output=output, seed=seed, num_workers=num_workers, progress=progress, save_hf_every_epoch=False, overwrite=True,
    )


def finetune_config(output: str, model: str | None, *, epochs: int, seed: int = 0, num_workers: int = 0, progress: bool = False) -> TrainConfig:
    """The demo's student recipe without a teacher; from ``model`` (a pre-trained checkpoint) or from scratch."""
    config = _student(output, epochs=epochs, seed=seed, num_workers=num_workers, progress=progress)
    if model is None:
        return config
    # A checkpoint fixes the architecture: only the recipe's settings apply.
    return dataclasses.replace(config, model=model, patch_size=None, hidden_size=None, depth=None, heads=None)


@dataclass
class Comparison:
    pretrain_val_loss: float  # reconstruction loss of the last pre-training epoch
    pretrained_acc1: float  # top-1 (%) after fine-tuning the pre-trained model (averaged heads)
    scratch_acc1: float  # top-1 (%) of the same student trained from scratch
    histories: dict[str, list[dict]]
    seconds: dict[str, float]


def compare(out: Path, *, seed: int, pretrain_epochs: int, finetune_epochs: int, labelled_per_class: int = LABELLED_PER_CLASS,
            subset: tuple[int, int] | None = None, num_workers: int = 0, progress: bool = False,
            log: Callable[[str], None] = print) -> Comparison:
    """Pre-train, fine-tune, and train from scratch; the runs are written under ``out``.

    ``subset`` = (training, validation) images per class limits the data (a smoke run); by
    default all 4,000 training digits are pre-trained on and all 1,000 validation digits score.
    """
    def limited(train_set: Dataset, val_set: Dataset) -> tuple[Dataset, Dataset]:
        if subset is None:
            return train_set, val_set
        return ClassBalancedSubset(train_set, subset[0]), ClassBalancedSubset(val_set, subset[1])

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    pre_config = pretrain_config(str(out / "pretrain"), epochs=pretrain_epochs, seed=seed, num_workers=num_workers, progress=progress)
    pre_train, pre_val = limited(*build_datasets(pre_config, pre_config.image_size, labelled=False))
    pre = pretrain(pre_config, train_dataset=pre_train, val_dataset=pre_val)
    seconds["pretrain"] = time.perf_counter() - start
    log(f"seed {seed}: pre-trained {pretrain_epochs} epochs on {len(pre_train)} training images without labels, validation "
        f"reconstruction loss {pre.final_metrics['val_loss']:.4f} ({seconds['pretrain']:.0f} s)")

    train_set, val_set = limited(*load_data(finetune_config("unused", None, epochs=finetune_epochs, seed=seed)))
    labelled = ClassBalancedSubset(train_set, labelled_per_class)
    accuracy, histories = {}, {}
    for name, model in (("pre-trained", str(out / "pretrain" / "last")), ("from scratch", None)):
        start = time.perf_counter()
        folder = "finetune" if model else "scratch"
        config = finetune_config(str(out / folder), model, epochs=finetune_epochs, seed=seed, num_workers=num_workers, progress=progress)
        result = fit(config, train_dataset=labelled, val_dataset=val_set)
        seconds[folder] = time.perf_counter() - start
        accuracy[name] = result.final_metrics["val_acc1"]
        histories[name] = result.history
        log(f"seed {seed}: {name}, {finetune_epochs} epochs on {len(labelled)} labelled images: {accuracy[name]:.2f}% top-1 "
            f"({seconds[folder]:.0f} s)")
    return Comparison(pre.final_metrics["val_loss"], accuracy["pre-trained"], accuracy["from scratch"], histories, seconds)
