"""``TrainConfig``: every setting of a training run, with the DeiT authors' defaults."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

# Defined once each: the processor's normalisation, the distillation loss's types, fast_kernels' settings.
from ..losses import KL_REDUCTIONS
from ..model_rules import DISTILLATION_TYPES
from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .fast_kernels import FAST_KERNEL_SETTINGS

AMP_CHOICES = ("none", "bf16", "fp16")
DEFAULT_NUM_WORKERS = 4
DEFAULT_WARMUP_EPOCHS = 5.0
LOG_CHOICES = ("tensorboard", "wandb")  # deit.train.trackers
# The SimMIM authors' layer decay for fine-tuning a masked-image-modeling ViT-B: suggested (a note)
# when fine-tuning a `deit pretrain` checkpoint, not the default, since on the mnist5k student
# (4 blocks, 30 epochs) it cost points (BENCHMARKS.md, "Layer decay").
MASKED_IMAGE_MODELING_LAYER_DECAY = 0.65


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class TrainConfig:
    # ---- model: a preset name (an architecture with fresh weights), or a checkpoint to fine-tune
    # from (a folder, a weights file, or a Hub name with its owner: facebook/deit-...)
    model: str = "deit-tiny-distilled-patch16-224"
    image_size: int | None = None  # new resolution: position embeddings are resampled
    patch_size: int | None = None  # the tiny-model overrides below build a fresh model only
    hidden_size: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0  # intermediate_size = mlp_ratio * hidden_size when hidden_size is set
    drop_path: float = 0.1

    # ---- data
    data: str = "mnist5k"  # "mnist5k", an ImageFolder path, or "hf:PATH" (datasets.save_to_disk)
    val_data: str | None = None  # default: the "val" split of `data`
    num_workers: int | None = None  # None: min(4, CPU cores - 1), see resolved_num_workers
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875  # eval transform: resize the shorter side to size / crop_pct, center crop
    # Partly labelled training (deit.train.partial_labels): images without labels, learned from the teacher.
    unlabeled: str | None = None  # a folder (searched recursively) or hf:PATH; needs a teacher
    labels_per_class: int | None = None  # keep the first N labelled images of each class; the rest join the unlabelled ones

    # ---- optimisation
    epochs: int = 300
    batch_size: int = 64  # per process; global batch = batch_size * processes * accum_steps
    accum_steps: int = 1
    lr: float = 5e-4  # for a global batch of 512, scaled linearly
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float | None = None  # None: the authors' 5, at most a fifth of the run (resolved_warmup_epochs)
    lr_per_step: bool = False  # False: the lr changes at epoch boundaries, as in the authors' runs
    weight_decay: float = 0.05
    clip_grad: float | None = None
    amp: str = "none"  # "bf16" | "fp16" (with a gradient scaler)

    # ---- augmentation and regularisation
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    aa: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment; None or "none" turns it off
    color_jitter: float = 0.3  # used only without RandAugment
    reprob: float = 0.25
    remode: str = "pixel"
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    interpolation: str = "bicubic"
    repeated_aug: bool = True
    num_repeats: int = 3
    model_ema: bool | None = None  # None: on when the run is long enough for the average to move (engine)
    model_ema_decay: float = 0.99996

    # ---- distillation
    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_input_size: int | None = None
    teacher_mean: tuple[float, ...] | None = None
    teacher_std: tuple[float, ...] | None = None
    distillation_type: str | None = None  # default: "hard" with a teacher, "none" without
    distillation_alpha: float = 0.5
    distillation_tau: float = 1.0
    # Soft distillation's KL averaged over batch x classes ("mean", the authors') or per image
    # ("batchmean"). Default: "mean", but "batchmean" when the training data has images without
    # labels, where "mean" leaves the teacher's term too weak (deit.train.partial_labels, measured).
    distillation_kl_reduction: str | None = None
    teacher_finetune_epochs: int = 0
    teacher_finetune_lr: float = 1e-3
    # On unlabelled images the DIST head learns the teacher's target; this also trains the CLS head
    # on the teacher's hard label there. Off by default: deit.train.partial_labels says why (measured).
    unlabeled_cls_teacher: bool = False
    teacher_cache: str | None = None  # a folder written by `deit teacher-cache`: the teacher's logits read back, the teacher not loaded

    # ---- run
    output: str = "runs/train"
    overwrite: bool = False  # start afresh in an output folder that holds a run (its files are replaced)
    resume: str | None = None  # a checkpoint file or folder; "auto": OUTPUT/checkpoint.pt
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    fast_kernels: str = "auto"  # the student's Linear layers on oneDNN (CPU): auto (where they pay) | on | off
    checkpoint_every_steps: int = 0  # also checkpoint inside epochs (0: at epoch ends only)
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps
    save_hf_every_epoch: bool = True  # `last/` in the Hugging Face layout after every epoch
    progress: bool = True

    # ---- the switches of timm's train.py and the transformers Trainer
    compile: str | None = None  # a torch.compile backend for the student and an online teacher ("inductor"); None: eager
    layer_decay: float | None = None  # None: off, every layer at one rate (from a `deit pretrain` checkpoint a note suggests one)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass (less memory, more time)
    log: tuple[str, ...] = ()  # scalar logs of the run beside metrics.jsonl: "tensorboard", "wandb"
    push_to_hub: str | None = None  # a Hub repository that last/ (with its model card) is uploaded to at the end

    @property
    def resolved_distillation_type(self) -> str:
        if self.distillation_type is not None:
            return self.distillation_type
        return "hard" if self.teacher else "none"

    @property
    def resolved_num_workers(self) -> int:
        """``num_workers``, or by default up to 4 loader processes, leaving one core to the training process."""
        if self.num_workers is not None:
            return self.num_workers
        return max(0, min(DEFAULT_NUM_WORKERS, usable_cpus() - 1))

    @property
    def resolved_warmup_epochs(self) -> float:
        """``warmup_epochs``, or by default the authors' 5 epochs cut to whole epochs of at most a fifth
        of the run: a warm-up as long as the run would train at warm-up rates throughout."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return float(min(DEFAULT_WARMUP_EPOCHS, self.epochs // 5))

    @property
    def uses_mixup(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot describe a run."""
        positive = ("epochs", "batch_size", "accum_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "distillation_tau", "model_ema_decay", "crop_pct"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("drop_path", "smoothing", "reprob", "hflip", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name in ("drop_path", "smoothing") and value == 1.0):
                raise ValueError(f"{name} must be a probability, got {value}")
        if self.distillation_kl_reduction not in (None, *KL_REDUCTIONS):
            raise ValueError(f"distillation_kl_reduction must be one of {KL_REDUCTIONS}, got {self.distillation_kl_reduction!r}")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.fast_kernels not in FAST_KERNEL_SETTINGS:
            raise ValueError(f"fast_kernels must be one of {FAST_KERNEL_SETTINGS}, got {self.fast_kernels!r}")
        kind = self.resolved_distillation_type
        if kind not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {kind!r}")
        if kind != "none" and not self.teacher:
            raise ValueError(f"{kind} distillation needs a teacher (--teacher)")
        if self.teacher_cache and kind == "none":
            raise ValueError(f"--teacher-cache {self.teacher_cache} needs the teacher settings it was built with (--teacher ...) and hard or soft distillation")
        if self.unlabeled and not self.teacher:
            raise ValueError(f"--unlabeled {self.unlabeled} needs a teacher (--teacher): the images without labels are learned from its predictions")
        if self.unlabeled and kind == "none":
            raise ValueError(f"--unlabeled {self.unlabeled} needs hard or soft distillation: the teacher's predictions are "
                             "the only target of an image without a label, and --distillation-type none ignores them")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"labels_per_class must be at least 1, got {self.labels_per_class}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must not be negative, got {self.warmup_epochs}")
        if self.teacher_finetune_epochs < 0 or self.resolved_num_workers < 0 or self.checkpoint_every_steps < 0 or self.weight_decay < 0:
            raise ValueError("teacher_finetune_epochs, num_workers, checkpoint_every_steps and weight_decay must not be negative")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive, got {self.clip_grad}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        unknown_logs = [name for name in self.log if name not in LOG_CHOICES]
        if unknown_logs:
            raise ValueError(f"log must name some of {LOG_CHOICES}, got {', '.join(map(repr, unknown_logs))}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be at least 1, got {self.stop_after_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)


# Settings that may change between a run and its resumption without breaking exactness
# of the remaining steps (where files go, how progress is shown, when to stop or checkpoint),
# or that change only the speed and the floating-point rounding (fast_kernels: the same
# matmuls on other kernels; the device, compilation and activation checkpointing likewise).
RESUMABLE_CHANGES = frozenset({
    "output", "resume", "progress", "num_workers", "stop_after_steps", "checkpoint_every_steps",
    "save_hf_every_epoch", "device", "fast_kernels", "overwrite", "compile", "grad_checkpointing", "log", "push_to_hub",
})
