"""Two more objectives of the engine's loop: a plain classifier, and a teacher's new head.

- :class:`ClassifierObjective`: any ``nn.Module`` that maps a batch to logits, trained with
  cross-entropy on the labels (label smoothing and mixup/cutmix as the run's settings say; images
  labelled -1 count for nothing). Validation, checkpoints, exact resume, DDP, AMP, EMA, metrics
  and curves are the engine's; ``best/``, ``last/`` and ``ema/`` hold the module's weights
  (``model.safetensors``: a plain module has no Hugging Face config). The demo's convnet teacher
  is trained this way (``deit.demo.recipe.train_teacher``).
- :class:`TeacherHeadObjective`: ``--teacher-finetune-epochs N``. The teacher's classification
  layer(s) are replaced by new ones for the data's classes and only those train, on the
  student's own training batches (its loaders and sampler: epochs 0..N-1 of the student's data
  order), before the student's run starts. The rest of the teacher stays frozen and in eval mode;
  under DDP every rank starts from rank 0's head and DDP averages the head's gradients, so every
  rank ends with the same head. The adaptation writes no files: a resumed student run adapts the
  head again, to the same weights.

Both are mixed into :class:`~deit.train.engine.Trainer` there (``engine.ClassifierTrainer`` and
``engine.TeacherHeadTrainer``): the engine adapts a teacher's head before distilling, so it
imports this module, and this module uses the engine's methods without importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_state_dict
from .distributed import DistributedContext
from .epoch_order import seed_everything
from .loaders import RunData
from .metrics import all_reduce_sum
from .optim import REFERENCE_BATCH_SIZE
from .recipe import TrainConfig
from .teacher import Teacher, output_linears
from .transforms import smoothed_one_hot

WEIGHTS_NAME = "model.safetensors"


def labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft target rows, averaged over the labelled mass: a row of zeros (an
    image without a label) adds nothing, and a batch without any label gives 0 (with gradients of
    zero, so that every rank still joins DDP's all-reduce)."""
    total = -(targets * torch.log_softmax(logits.float(), dim=-1)).sum()
    return total / targets.sum().clamp(min=torch.finfo(torch.float32).tiny)


class ClassifierObjective:
    """Cross-entropy on the logits of ``model`` (any ``nn.Module``), in the engine's loop."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, ctx: DistributedContext, *, model: nn.Module, teacher: nn.Module | None = None,
                 train_set: Any = None, val_set: Any = None) -> None:
        self.classifier = model
        super().__init__(config, ctx, teacher=teacher, train_set=train_set, val_set=val_set)  # the engine's Trainer, next in the MRO

    def _build_model(self) -> nn.Module:
        return self.classifier

    def _layer_decay(self) -> float | None:
        return None  # a rule for a transformer's blocks

    def _use_fast_kernels(self, model: nn.Module) -> bool:
        return False  # the oneDNN Linear kernels are chosen for the DeiT student's shapes

    def _setup_objective(self, teacher: nn.Module | None) -> None:
        if teacher is not None:
            raise ValueError("a classifier trained on its labels takes no teacher")
        self.teacher = None
        self.num_classes = len(self.data.id2label)
        self.mixup = self._build_mixup() if self.config.uses_mixup else None

    def _labelled_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images to run and their soft targets. Without mixup, images without a label (-1) are
        left out before the forward pass (all of them only when the whole batch is unlabelled)."""
        if self.mixup is not None:
            return self.mixup(images, labels)
        labelled = labels >= 0
        if not labelled.all() and labelled.any():
            images, labels = images[labelled], labels[labelled]
        return images, smoothed_one_hot(labels, self.num_classes, self.config.smoothing)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, targets = self._labelled_batch(images, labels)
        with self._autocast():
            logits = self.train_model(images)
        return labelled_cross_entropy(logits, targets)

    def _save_hf(self, model: nn.Module, name: str) -> None:
        folder = self.output_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict({key: value.contiguous() for key, value in model.state_dict().items()}, folder / WEIGHTS_NAME)


class TeacherLogits(nn.Module):
    """The teacher's logits with autograd on (:meth:`Teacher.forward` runs without): the module
    that DDP wraps while the new head learns. ``train()`` leaves the teacher in eval mode."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.teacher.logits(pixel_values)


def replace_heads(teacher: Teacher, num_classes: int, device: torch.device) -> list[str]:
    """Put new ``nn.Linear`` layers for ``num_classes`` where the teacher's classification layers
    are (both heads of a distilled DeiT); the names of the layers replaced."""
    if isinstance(teacher.model, torch.jit.ScriptModule):
        raise ValueError(f"teacher {teacher.name}: a TorchScript teacher's head cannot be replaced; export it with {num_classes} classes")
    names = output_linears(teacher.model, teacher.num_classes)
    if not names:
        raise ValueError(
            f"teacher {teacher.name}: no nn.Linear layer with {teacher.num_classes} outputs to replace "
            "(torch.export and TorchScript teachers cannot be adapted; export one with the right class count)"
        )
    teacher.class_order = None  # the new heads predict the data's classes in the data's order
    for name in names:
        old = teacher.model.get_submodule(name)
        head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(device=device, dtype=old.weight.dtype)
        teacher.model.set_submodule(name, head)
    return names


def head_adaptation_config(student: TrainConfig, world_size: int) -> TrainConfig:
    """The adaptation's settings: the student's data, batch and precision; ``teacher_finetune_epochs``
    at the constant learning rate ``teacher_finetune_lr``; AdamW without weight decay; plain
    cross-entropy; nothing written, logged to trackers or resumed."""
    lr = student.teacher_finetune_lr
    return dataclasses.replace(
        student, epochs=student.teacher_finetune_epochs, accum_steps=1,
        # The engine scales --lr by the global batch / 512; the adaptation's rate is meant as it is.
        lr=lr * REFERENCE_BATCH_SIZE / (student.batch_size * world_size), min_lr=lr, warmup_epochs=0.0, lr_per_step=True,
        weight_decay=0.0, clip_grad=None, smoothing=0.0, mixup=0.0, cutmix=0.0, model_ema=False, layer_decay=None,
        compile=None, grad_checkpointing=False, resume=None, checkpoint_every_steps=0, stop_after_steps=None, log=(), push_to_hub=None,
    )


class TeacherHeadObjective(ClassifierObjective):
    """A teacher's new head trained on the student's batches (see the module docstring)."""

    run_files = ()  # it writes nothing into the student's folder
    progress_label = "teacher head epoch"

    def __init__(self, config: TrainConfig, ctx: DistributedContext, *, teacher: Teacher, data: RunData, num_classes: int) -> None:
        self.student_data = data
        seed_everything(config.seed)  # the new head's initial weights (DDP then gives every rank rank 0's)
        self.head_names = replace_heads(teacher, num_classes, ctx.device)
        super().__init__(config, ctx, model=TeacherLogits(teacher))
        self._estimate_pending = False  # the epoch lines say how long it takes
        # Summed over the epoch's labelled images: loss, count, correct predictions.
        self._epoch_counts = torch.zeros(3, dtype=torch.float64, device=self.device)

    @classmethod
    def adapt(cls, teacher: Teacher, student: Any, num_classes: int) -> Teacher:
        """Train a new head of ``teacher`` on the data of ``student`` (the student's engine.Trainer)."""
        trainer = cls(head_adaptation_config(student.config, student.ctx.world_size), student.ctx, teacher=teacher,
                      data=student.data, num_classes=num_classes)
        trainer.run()
        teacher.requires_grad_(False)
        teacher.num_classes = num_classes
        teacher.class_names = None  # a new head: its classes are the data's, in the data's order
        return teacher

    def _build_data(self, train_set: Any, val_set: Any) -> RunData:
        return self.student_data

    def _log_plan(self) -> None:
        config = self.config
        self._log(f"teacher head: {', '.join(self.head_names)} replaced for {self.num_classes} classes and trained alone (the rest "
                  f"of the teacher frozen, in eval mode) on the student's training batches, images without a label left out: "
                  f"{config.epochs} epoch(s) of {self.steps_per_epoch} steps, AdamW lr {self.peak_lr:.3g}")

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, targets = self._labelled_batch(images, labels)
        with self._autocast():
            logits = self.train_model(images)
        loss = labelled_cross_entropy(logits, targets)
        with torch.no_grad():
            labelled = targets.sum(-1) > 0
            hits = (logits.argmax(-1) == targets.argmax(-1)) & labelled
            seen = labelled.sum()
            self._epoch_counts += torch.stack([loss.detach() * seen, seen, hits.sum()]).double()
        return loss

    def _end_epoch(self, train_stats: dict[str, float]) -> None:
        loss_sum, seen, correct = all_reduce_sum(self._epoch_counts.tolist(), self.device)
        self._epoch_counts.zero_()
        position = self.position
        self.history.append({"epoch": position.epoch, **train_stats, "train_loss": loss_sum / max(seen, 1),
                             "train_acc1": 100 * correct / max(seen, 1), "labelled_images": int(seen)})
        position.epoch += 1
        position.batches_done = 0
        entry = self.history[-1]
        self._log(f"teacher head epoch {position.epoch}/{self.config.epochs}: loss {entry['train_loss']:.4f}, "
                  f"train acc {entry['train_acc1']:.2f}% ({int(seen)} labelled images, {train_stats['train_time_s']:.0f} s)")
