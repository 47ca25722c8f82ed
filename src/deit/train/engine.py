"""The training loop: ``fit(TrainConfig(...))`` runs the DeiT recipe, with or without a teacher.

The same loop pre-trains by masked-image modeling (``deit.train.pretraining``), and trains a plain
classifier or a teacher's new head (``deit.train.classifier_training``): the objective (data,
model, loss, evaluation, files of its own) is a set of methods a subclass of :class:`Trainer`
overrides; the loop, checkpoints, resume, DDP, AMP, EMA and metrics are shared.

Exactness is designed in, not hoped for: the data order, every sample's augmentation and the
main process's random state at every batch are functions of (seed, epoch, position), and the
learning rate is a function of the optimizer step. A checkpoint therefore only has to record
*where* the run is, and a resumed run (even one killed in the middle of an epoch) trains the
same steps on the same data as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..dtypes import to_dtype
from ..losses import DistillationLoss, LabelSmoothingCrossEntropy, StudentCriterion
from ..modeling import DeiTPreTrainedModel
from . import checkpointing
from .classifier_training import ClassifierObjective, TeacherHeadObjective
from .compiling import CompileUnavailableError, check_compile, compile_failure_message, compile_module, is_compile_failure
from ..errors import DeitError
from .distributed import DistributedContext, barrier, init_distributed, shutdown_distributed
from .ema import ModelEma
from .epoch_order import seed_everything, step_seed
from .fast_kernels import fast_kernels_pay, use_fast_kernels
from .loaders import RunData, build_run_data
from .metrics import CURVES_NAME, METRICS_NAME, RunningMean, all_reduce_sum, plot_curves, write_metrics
from .model_card import check_push, model_card_text, push_run, write_model_card
from .optim import WarmupCosineSchedule, build_optimizer, scaled_lr
from .recipe import MASKED_IMAGE_MODELING_LAYER_DECAY, RESUMABLE_CHANGES, TrainConfig
from .student import build_student, starts_from_masked_image_modeling, student_image_size
from .trackers import TRACKER_FOLDERS, Trackers



class NonFiniteLossError(DeitError, RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


class RunExistsError(DeitError, FileExistsError):
    """The output folder holds a run and neither ``resume`` nor ``overwrite`` says what to do with it."""


# The whole run's time is estimated from the first steps of the first epoch (loader start included).
ESTIMATE_AFTER_STEPS = 3
# An EMA that still weighs the initial weights by more than this at the end of the run is close
# to a copy of them (decay ** steps: the share of the initial weights left in the average).
EMA_MAX_INITIAL_SHARE = 0.05


@dataclass
class TrainResult:
    output_dir: Path
    model: DeiTPreTrainedModel  # the trained weights (not the EMA)
    ema_model: nn.Module | None
    history: list[dict[str, Any]]  # one entry per finished epoch, as in metrics.jsonl
    step_losses: list[float] = field(default_factory=list)  # mean loss over all ranks, per optimizer step of this call
    best: float = math.nan  # the best epoch's value of the metric that picks best/ (val_acc1; pre-training: val_loss)
    completed: bool = True  # False when stop_after_steps ended the run early
    is_main: bool = True  # rank 0 (the process that wrote the files)

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class _Position:
    """Where the run is: the epoch, the batches of it already trained on, optimizer steps so far."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0


class Trainer:
    """One run of :func:`fit`; all state that a checkpoint must restore lives here."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext, *, teacher: nn.Module | None = None,
                 train_set: Any = None, val_set: Any = None) -> None:
        self.config = config
        self.ctx = ctx
        self.output_dir = Path(config.output)
        self._claim_output_dir()
        self.device = ctx.device
        self.amp_dtype = None if config.amp == "none" else to_dtype(config.amp, "amp")
        if config.compile:  # before the data and the teacher are loaded: a run that cannot compile stops at once
            check_compile(config.compile, self.device)

        self.image_size = student_image_size(config)
        self.data: RunData = self._build_data(train_set, val_set)
        seed_everything(config.seed)  # the same initial weights on every rank
        student = self._build_model().to(self.device)
        if config.grad_checkpointing:
            student.gradient_checkpointing_enable()
        self.fast_kernels = self._use_fast_kernels(student)
        self.model = student
        self.train_model: nn.Module = student
        if config.compile:  # compiled inside DDP: the engine's DDP handling (no_sync) stays as it is
            self.train_model = compile_module(student, config.compile)
        if ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)
        self._setup_objective(teacher)
        if config.compile:
            has_teacher = getattr(self, "teacher", None) is not None and not config.teacher_cache
            if has_teacher:
                self.teacher = compile_module(self.teacher, config.compile)
            self._log(f"compile: the student{' and the teacher' if has_teacher else ''} with torch.compile ({config.compile}); "
                      "the first steps include the compilation; validation runs eager")

        self.global_batch = config.batch_size * ctx.world_size * config.accum_steps
        self.peak_lr = scaled_lr(config.lr, self.global_batch)
        self.layer_decay = self._layer_decay()
        self.optimizer = build_optimizer(student, self.peak_lr, config.weight_decay, layer_decay=self.layer_decay)
        self.steps_per_epoch = self.data.batches_per_epoch // config.accum_steps
        self.schedule = WarmupCosineSchedule(
            self.optimizer, peak_lr=self.peak_lr, epochs=config.epochs, steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=config.resolved_warmup_epochs, warmup_lr=config.warmup_lr, min_lr=config.min_lr, per_step=config.lr_per_step,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self._log_plan()
        self.ema = ModelEma(student, config.model_ema_decay) if self._keeps_ema() else None
        self._estimate_pending = True
        self._reported_corrupt: set[str] = set()
        self.position = _Position()
        self.history: list[dict[str, Any]] = []
        self.best = -math.inf if self.best_is_max else math.inf
        self.step_losses: list[float] = []
        self.trackers = Trackers([])  # opened by run(), once the step it starts from is known

    # ------------------------------------------------------------------ the objective
    # Image classification, with or without a teacher. A subclass trains another objective in
    # the same loop by overriding these methods (deit.train.pretraining: masked-image modeling).
    best_metric = "val_acc1"  # the epoch metric that picks best/
    best_is_max = True
    # What a run writes into its output folder (--overwrite removes these, and only these).
    run_files = (checkpointing.CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, "best", "last", "ema", *TRACKER_FOLDERS)
    model_card_task = "image-classification"
    progress_label = "epoch"  # what the progress bar counts

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def _note(self, message: str) -> None:
        """A warning for the person at the console (stderr), from rank 0 only."""
        if self.ctx.is_main:
            print(f"note: {message}", file=sys.stderr, flush=True)

    def _epoch_summary(self, entry: dict[str, Any]) -> str:
        """The line printed when an epoch ends: its loss and validation accuracy."""
        parts = [f"train loss {entry['train_loss']:.4f}"]
        if "val_acc1" in entry:
            heads = ", ".join(f"{label} {entry[key]:.2f}" for key, label in (("val_acc1_cls", "CLS"), ("val_acc1_dist", "DIST")) if key in entry)
            parts.append(f"val top-1 {entry['val_acc1']:.2f} %" + (f" ({heads})" if heads else ""))
        elif "val_loss" in entry:
            parts.append(f"val loss {entry['val_loss']:.4f}")
        if "ema_acc1" in entry:
            parts.append(f"EMA top-1 {entry['ema_acc1']:.2f} %")
        return ", ".join(parts)

    def _build_data(self, train_set: Any, val_set: Any) -> RunData:
        return build_run_data(self.config, self.ctx, self.image_size, train_set, val_set)

    def _build_model(self) -> DeiTPreTrainedModel:
        return build_student(self.config, self.data.id2label, log=self._model_log)

    @property
    def _model_log(self) -> Any:
        """Where the model's origin is told: the console, except on resume (the checkpoint's weights replace it)."""
        return (lambda message: None) if self.config.resume else self._log

    def _layer_decay(self) -> float | None:
        """--layer-decay. None (or 1), the default: every layer at one rate, the DeiT recipe's two parameter
        groups; fine-tuning an encoder from ``deit pretrain``, a note names SimMIM's value and what it did here."""
        decay = self.config.layer_decay
        if decay is None and starts_from_masked_image_modeling(self.config.model):
            self._note(f"layer decay off (the default): {self.config.model} was pre-trained by masked-image modeling, which SimMIM "
                       f"fine-tunes with --layer-decay {MASKED_IMAGE_MODELING_LAYER_DECAY:g} (a ViT-B, 100 epochs); on the mnist5k "
                       "student it cost about 7 points (BENCHMARKS.md)")
        return None if decay == 1.0 else decay

    # A model without a distillation token may not distil unless a subclass says so (the
    # benchmark's ablation: the teacher's targets on a plain ViT's class token).
    distil_class_token = False

    def _setup_objective(self, teacher: nn.Module | None) -> None:
        from .partial_labels import has_unlabelled

        config = self.config
        self.distillation_type = config.resolved_distillation_type
        if self.distillation_type != "none" and self.model.num_prefix_tokens != 2 and not self.distil_class_token:
            raise ValueError(f"{config.model} has no distillation token: distillation needs a DeiT '-distilled' model")
        # Images without a label (deit.train.partial_labels) are learned from the teacher alone.
        self.unlabelled = has_unlabelled(self.data.train_set)
        if self.unlabelled and self.distillation_type == "none":
            raise ValueError("the training data has images without labels (label -1): they need a teacher (--teacher) "
                             "and hard or soft distillation")
        if self.unlabelled:
            without = sum(1 for t in self.data.train_set.targets if int(t) < 0)
            self._log(f"training images: {len(self.data.train_set) - without} with labels, {without} without (learned from the teacher)")
        self.teacher = self._prepare_teacher(teacher) if self.distillation_type != "none" else None
        distillation = None
        if self.distillation_type != "none":
            reduction = config.distillation_kl_reduction or ("batchmean" if self.unlabelled else "mean")
            if self.distillation_type == "soft":
                self._log(f"soft distillation: the KL averaged {'per image' if reduction == 'batchmean' else 'over images x classes'} "
                          f"(--distillation-kl-reduction {reduction})")
            distillation = DistillationLoss(self.distillation_type, alpha=config.distillation_alpha, tau=config.distillation_tau,
                                            kl_reduction=reduction)
        self.criterion = StudentCriterion(LabelSmoothingCrossEntropy(config.smoothing), distillation, distil_class_token=self.distil_class_token)
        self.mixup = self._build_mixup() if config.uses_mixup else None

    def _student_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch as the student and its teacher see it (also deit.train.teacher_cache_builder's)."""
        if self.mixup is not None:
            return self.mixup(images, targets)
        if self.unlabelled:
            from .transforms import smoothed_one_hot

            # Soft targets, a row of zeros for an image without a label: its CLS term drops out.
            return images, smoothed_one_hot(targets, len(self.data.id2label), self.config.smoothing)
        return images, targets

    def _loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch (on the device), under the run's autocast."""
        images, targets = self._student_batch(images, targets)
        with self._autocast():
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                if self.unlabelled and self.config.unlabeled_cls_teacher:
                    from .partial_labels import with_teacher_labels

                    targets = with_teacher_labels(targets, teacher_logits.float(), self.config.smoothing)
            outputs = self.train_model(images)
            return self.criterion(outputs, targets, teacher_logits)

    def _evaluate_model(self, model: nn.Module) -> dict[str, float]:
        from .evaluate import evaluate

        return evaluate(model, self.data.val_loader, device=self.device, dtype=self.amp_dtype)

    def _write_epoch_files(self) -> None:
        """Files of the objective's own, written by rank 0 at the end of each epoch."""

    # ------------------------------------------------------------------ setup helpers
    def _claim_output_dir(self) -> None:
        """Refuse an output folder that holds a run unless this run resumes it or ``overwrite``
        says to start afresh (then the run's own files are removed, nothing else)."""
        config = self.config
        if config.resume:
            return
        found = [name for name in self.run_files if (self.output_dir / name).exists()]
        if found and not config.overwrite:
            raise RunExistsError(
                f"{self.output_dir} already holds a training run ({', '.join(found)}); continue it with --resume, "
                "start afresh with --overwrite (its files are then replaced), or choose another --output"
            )
        if config.overwrite:
            if self.ctx.is_main and found:
                for name in found:
                    path = self.output_dir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                self._note(f"--overwrite: removed the previous run's {', '.join(found)} from {self.output_dir}")
            barrier()  # every rank, whatever it found: rank 0 may already have removed the files

    def _keeps_ema(self) -> bool:
        """Whether to keep an EMA of the weights. By default (``model_ema=None``) only when the run is
        long enough for the average to leave the initial weights; asked for, it is kept with a note."""
        config = self.config
        if config.model_ema is False:
            return False
        total_steps = config.epochs * self.steps_per_epoch
        initial_share = config.model_ema_decay ** total_steps
        if initial_share <= EMA_MAX_INITIAL_SHARE:
            return True
        fitting_decay = EMA_MAX_INITIAL_SHARE ** (1 / total_steps)
        why = (f"an EMA with decay {config.model_ema_decay:g} would still be {100 * initial_share:.0f} % the initial weights "
               f"after this run's {total_steps} steps")
        if config.model_ema is None:
            self._note(f"EMA off: {why}; --model-ema --model-ema-decay {fitting_decay:.4g} keeps one that moves")
            return False
        self._note(f"{why}, so ema/ will be close to them; a decay of {fitting_decay:.4g} or lower moves it")
        return True

    def _log_plan(self) -> None:
        """What the run will do, before it starts: data, steps, schedule, and the defaults that adapted."""
        config, data = self.config, self.data
        world = self.ctx.world_size
        classes = len(data.id2label)
        names = ", ".join(list(data.id2label.values())[:5]) + (", ..." if classes > 5 else "")
        self._log(
            f"data: {len(data.train_set)} training images, {len(data.val_set)} validation images"
            + (f", {classes} classes ({names})" if classes else "")
        )
        self._log(
            f"steps: {self.steps_per_epoch} per epoch of {self.global_batch} images "
            f"({config.batch_size} per step x {world} process(es) x {config.accum_steps} accumulation), "
            f"{config.epochs} epoch(s) = {self.steps_per_epoch * config.epochs} steps; peak learning rate {self.peak_lr:.3g}"
        )
        if config.warmup_epochs is None and config.resolved_warmup_epochs < 5:
            self._note(f"warm-up {config.resolved_warmup_epochs:g} epoch(s): the recipe's 5 are cut to at most a fifth of a "
                       f"{config.epochs}-epoch run, or the learning rate would never leave the warm-up (--warmup-epochs sets it)")
        if config.repeated_aug and config.num_repeats > 1:
            distinct = math.ceil(len(data.train_set) / config.num_repeats)
            self._note(f"repeated augmentation x{config.num_repeats} (the recipe's): each epoch trains on {config.num_repeats} views "
                       f"of about {distinct} of the {len(data.train_set)} images; --no-repeated-aug shows every image once per epoch")

    def _use_fast_kernels(self, student: nn.Module) -> bool:
        """Put the student's Linear layers on oneDNN where ``config.fast_kernels`` says so (before
        the optimizer, EMA and DDP see the model: they then hold the same parameters); logged."""
        dtype = self.amp_dtype or torch.float32
        if not fast_kernels_pay(self.config.fast_kernels, dtype, self.device):
            self._log(f"fast kernels: off (--fast-kernels {self.config.fast_kernels}, {self.device.type}, {dtype})")
            return False
        replaced = use_fast_kernels(student, dtype=dtype)
        self._log(f"fast kernels: on ({replaced} Linear layers on oneDNN, forward and backward; --fast-kernels {self.config.fast_kernels})")
        return True

    def _prepare_teacher(self, teacher: nn.Module | None) -> nn.Module:
        from .teacher import load_teacher

        config = self.config
        num_classes = len(self.data.id2label)
        if config.teacher_cache:  # the logits of every view, read back from deit teacher-cache's store: no teacher loaded
            from .teacher_cache import open_cached_teacher

            cached = open_cached_teacher(
                config, image_size=self.image_size, world_size=self.ctx.world_size, rank=self.ctx.rank, train_set=self.data.train_set,
                class_names=list(self.data.id2label.values()), batches_per_epoch=self.data.batches_per_epoch // config.accum_steps * config.accum_steps,
                position=lambda: (self.position.epoch, self.position.batches_done),
            )
            self._log(cached.input_description)
            return cached
        if teacher is None:
            finetune = config.teacher_finetune_epochs > 0
            teacher = load_teacher(
                config.teacher, num_classes=None if finetune else num_classes, device=self.device,
                student_mean=config.mean, student_std=config.std, input_size=config.teacher_input_size,
                mean=config.teacher_mean, std=config.teacher_std, weights_path=config.teacher_weights,
                student_input_size=self.image_size, interpolation=config.interpolation,
            )
            if finetune and teacher.num_classes != num_classes:
                # A new head trained in this loop on the student's batches (seeded: a resumed run adapts it to the same weights).
                teacher = TeacherHeadTrainer.adapt(teacher, self, num_classes)
        teacher = teacher.to(self.device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self._log(getattr(teacher, "input_description", "") or f"teacher {config.teacher}: fed the student's batch as it is")
        self._match_teacher_classes(teacher)
        self._check_teacher_classes(teacher, num_classes)
        return teacher

    def _match_teacher_classes(self, teacher: nn.Module) -> None:
        """A teacher whose checkpoint names its classes must name the data's: in another order its
        logits are reordered (said so); other names are refused."""
        teacher_names = getattr(teacher, "class_names", None)
        names = [self.data.id2label[i] for i in range(len(self.data.id2label))]
        if teacher_names is None or teacher_names == names:
            return
        if sorted(teacher_names) != sorted(names):
            raise ValueError(
                f"the teacher {self.config.teacher} predicts the classes {_listing(teacher_names)} but the data has "
                f"{_listing(names)}: use a teacher trained on these classes, or adapt its head with --teacher-finetune-epochs N"
            )
        teacher.reorder_classes(names)
        self._log(f"teacher {self.config.teacher}: same classes in another order ({_listing(teacher_names)}); "
                  "its logits are reordered to the data's")

    def _check_teacher_classes(self, teacher: nn.Module, num_classes: int) -> None:
        """One forward pass on a validation image: the teacher must predict the student's classes."""
        val_set = self.data.val_set
        image = next(item[0] for item in (val_set[i] for i in range(len(val_set))) if item is not None)
        with torch.no_grad():
            logits = teacher(image.unsqueeze(0).to(self.device))
        if logits.shape[-1] != num_classes:
            raise ValueError(
                f"the teacher predicts {logits.shape[-1]} classes but the data has {num_classes}: use a teacher trained "
                "on these classes, or adapt its head first with --teacher-finetune-epochs N"
            )

    def _build_mixup(self) -> Any:
        from .transforms import MixupCutmix

        config = self.config
        return MixupCutmix(
            len(self.data.id2label), mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
            switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing,
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "world_size": self.ctx.world_size,
            "epoch": self.position.epoch,
            "batches_done": self.position.batches_done,
            "global_step": self.position.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": checkpointing.capture_rng_state(),
            "history": self.history,
            "best": self.best,
        }

    def save_checkpoint(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLossError(self._non_finite_message("the weights"))
        if self.ctx.is_main:
            checkpointing.save_checkpoint(self.output_dir / checkpointing.CHECKPOINT_NAME, self._checkpoint_state())
        barrier()

    def resume(self, path: str) -> None:
        path = checkpointing.resolve_resume_path(path, self.output_dir)
        state = checkpointing.load_checkpoint(path)
        changed = sorted(k for k, v in state["config"].items() if k not in RESUMABLE_CHANGES and not _same(getattr(self.config, k, v), v))
        if changed:
            self._note(f"resuming with settings that differ from the checkpoint's: {', '.join(changed)}; the run will not match an uninterrupted one")
        if state["batches_done"] and state["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"the checkpoint was written in the middle of an epoch by {state['world_size']} process(es); resume it with "
                f"{state['world_size']} (this run has {self.ctx.world_size}), or from an end-of-epoch checkpoint"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(
                f"{path}: the checkpoint's weights do not fit the model these settings build"
                + (f" (settings changed: {', '.join(changed)})" if changed else "")
                + f": {str(err).splitlines()[-1].strip()}; resume with the run's own settings (deit train --output FOLDER --resume)"
            ) from None
        self._log(f"resumed from {path}: {state['epoch']} epoch(s) and {state['batches_done']} batch(es) done, step {state['global_step']}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state["ema"] is None:
                self._note("the checkpoint has no EMA weights; the EMA starts again from the current weights")
                self.ema = ModelEma(self.model, self.config.model_ema_decay)
            else:
                self.ema.load_state_dict(state["ema"])
        checkpointing.restore_rng_state(state["rng"])
        self.position = _Position(state["epoch"], state["batches_done"], state["global_step"])
        self.history = list(state["history"])
        self.best = state["best"] if "best" in state else state["best_acc1"]  # "best_acc1": checkpoints of classification only

    def _save_hf(self, model: nn.Module, name: str) -> None:
        c = self.config
        checkpointing.save_hf_model(model, self.output_dir / name, mean=c.mean, std=c.std, crop_pct=c.crop_pct)
        card = model_card_text(c, self.history[-1], which=name, model_name=f"{self.output_dir.name}-{name}",
                               task=self.model_card_task, settings=self._card_settings())
        write_model_card(self.output_dir / name, card)

    def _card_settings(self) -> dict[str, Any]:
        """The settings the model card shows as they were resolved for this run (not "None: adapt")."""
        c = self.config
        return {"layer_decay": self.layer_decay, "warmup_epochs": c.resolved_warmup_epochs, "model_ema": self.ema is not None,
                "image_size": self.image_size, "global_batch_size": self.global_batch, "peak_lr": self.peak_lr}

    # ------------------------------------------------------------------ training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _non_finite_message(self, what: str) -> str:
        p = self.position
        kept = self.output_dir / checkpointing.CHECKPOINT_NAME
        where = f"the last good checkpoint is kept at {kept}" if kept.is_file() else "no checkpoint had been written yet"
        return (
            f"{what} became non-finite at epoch {p.epoch + 1}, optimizer step {p.global_step}; training stopped and {where}. "
            "Lower --lr, set --clip-grad, or use --amp bf16 instead of fp16"
        )

    def _train_batch(self, images: torch.Tensor, targets: torch.Tensor, sync: bool) -> torch.Tensor:
        loss = self._loss(images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True))
        no_sync = self.train_model.no_sync() if isinstance(self.train_model, DistributedDataParallel) and not sync else contextlib.nullcontext()
        # Backward even for a non-finite loss: under DDP every rank must join the gradient
        # all-reduce. The step that follows is refused by train_epoch, so NaN gradients do no harm.
        with no_sync:
            self.scaler.scale(loss / self.config.accum_steps).backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

    def _seed_batch(self, batches_per_epoch: int) -> None:
        """The random state of the next batch (mixup, stochastic depth) depends on where it is only."""
        position = self.position
        seed_everything(step_seed(self.config.seed, self.ctx.rank, position.epoch * batches_per_epoch + position.batches_done))

    def train_epoch(self) -> dict[str, float] | None:
        """Train the rest of the current epoch; None when ``stop_after_steps`` ended it early."""
        from tqdm.auto import tqdm

        config, position = self.config, self.position
        accum = config.accum_steps
        batches_per_epoch = self.steps_per_epoch * accum
        self.data.order.set_epoch(position.epoch, skip=position.batches_done * config.batch_size)
        self.train_model.train()
        running = RunningMean()
        bar = tqdm(
            total=self.steps_per_epoch, initial=position.batches_done // accum, desc=f"{self.progress_label} {position.epoch + 1}/{config.epochs}",
            unit="step", disable=not (config.progress and self.ctx.is_main), dynamic_ncols=True, file=sys.stderr,
        )
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        tick, images_seen, lr = time.perf_counter(), 0, math.nan
        steps_timed = 0
        for images, targets in self.data.train_loader:
            if position.batches_done >= batches_per_epoch:
                break  # micro-batches that do not fill a last accumulation step
            micro = position.batches_done % accum
            if micro == 0:
                lr = self.schedule.apply(position.global_step)
            self._seed_batch(batches_per_epoch)
            loss = self._train_batch(images, targets, sync=micro == accum - 1)
            step_loss += loss.double() * images.shape[0]
            position.batches_done += 1
            images_seen += images.shape[0]
            if micro != accum - 1:
                continue
            local_loss = step_loss.item()
            total, count, bad = all_reduce_sum([local_loss, images.shape[0] * accum, float(not math.isfinite(local_loss))], self.device)
            if bad:
                bar.close()
                raise NonFiniteLossError(self._non_finite_message("the loss"))
            self._optimizer_step()
            step_loss.zero_()
            position.global_step += 1
            self.step_losses.append(total / count)
            self.trackers.log_step(position.global_step, total / count, lr)
            running.add(total / count, int(count))
            elapsed = time.perf_counter() - tick
            throughput = images_seen * self.ctx.world_size / max(elapsed, 1e-9)
            bar.set_postfix({"loss": f"{running.mean:.4f}", "lr": f"{lr:.2e}", "img/s": f"{throughput:.0f}"}, refresh=False)
            bar.update(1)
            steps_timed += 1
            if self._estimate_pending and (steps_timed == ESTIMATE_AFTER_STEPS or position.batches_done >= batches_per_epoch):
                self._log_time_estimate(elapsed / steps_timed, steps_timed, bar)
            if position.batches_done >= batches_per_epoch:
                continue  # the epoch's end writes its own checkpoint
            if config.checkpoint_every_steps and position.global_step % config.checkpoint_every_steps == 0:
                self.save_checkpoint()
            if self._should_stop():
                self.save_checkpoint()
                bar.close()
                return None
        bar.close()
        elapsed = time.perf_counter() - tick
        return {
            "train_loss": running.mean,
            "lr": lr,
            "train_images_per_s": images_seen * self.ctx.world_size / max(elapsed, 1e-9),
            "train_time_s": elapsed,
        }

    def _log_time_estimate(self, seconds_per_step: float, steps_timed: int, bar: Any) -> None:
        """The training time of this call's steps, from the first ones (validation not included)."""
        self._estimate_pending = False
        if not self.ctx.is_main:
            return
        steps = self.config.epochs * self.steps_per_epoch - self.position.global_step + steps_timed
        bar.write(f"time: {seconds_per_step:.2g} s per step, about {_duration(seconds_per_step * steps)} "
                  f"for this run's {steps} steps (plus validation)", file=sys.stderr)

    def _should_stop(self) -> bool:
        limit = self.config.stop_after_steps
        return limit is not None and self.position.global_step >= limit

    def evaluate(self) -> dict[str, float]:
        results = {f"val_{k}": v for k, v in self._evaluate_model(self.model).items()}
        if self.ema is not None:
            results.update({f"ema_{k}": v for k, v in self._evaluate_model(self.ema.module).items()})
        return results

    def _corrupt_image_counts(self) -> dict[str, int]:
        """Images skipped as unreadable so far, over all ranks (a collective: every rank calls it)."""
        from .data import count_corrupt

        return {
            f"{split}_corrupt_images": count_corrupt(dataset)
            for split, dataset in (("train", self.data.train_set), ("val", self.data.val_set))
            if hasattr(dataset, "num_corrupt")
        }

    def _report_corrupt_files(self) -> None:
        """Name the corrupt files this process met that were not named yet (between progress bars)."""
        for split, dataset in (("training", self.data.train_set), ("validation", self.data.val_set)):
            if not hasattr(dataset, "corrupt_files"):
                continue
            new = [name for name in dataset.corrupt_files() if name not in self._reported_corrupt]
            self._reported_corrupt.update(new)
            fate = "left out" if not getattr(dataset, "replace_corrupt", True) else "replaced by the next readable image"
            if new:
                self._note(f"skipped {len(new)} unreadable {split} image(s) ({fate}): {', '.join(new)}")

    def _end_epoch(self, train_stats: dict[str, float]) -> None:
        position = self.position
        entry = {"epoch": position.epoch, "global_step": position.global_step, **train_stats, **self.evaluate(), **self._corrupt_image_counts()}
        self._report_corrupt_files()
        self.history.append(entry)
        value = entry.get(self.best_metric, math.nan)
        improved = value > self.best if self.best_is_max else value < self.best
        if improved:
            self.best = value
        position.epoch += 1
        position.batches_done = 0
        self._log(f"epoch {position.epoch}/{self.config.epochs}: {self._epoch_summary(entry)}"
                  + ("" if improved else f"; best so far {self.best:.4g}") + f" ({entry['train_time_s']:.0f} s)")
        if self.ctx.is_main:
            if improved:
                self._save_hf(self.model, "best")
            last_epoch = position.epoch == self.config.epochs
            if self.config.save_hf_every_epoch or last_epoch:
                self._save_hf(self.model, "last")
                if self.ema is not None:
                    self._save_hf(self.ema.module, "ema")
            write_metrics(self.output_dir / METRICS_NAME, self.history)
            self.trackers.log_epoch(entry)
            self._write_epoch_files()
            plot_curves({"": self.history}, self.output_dir / CURVES_NAME, title=f"{self.config.model} on {self.config.data}")
        self.save_checkpoint()

    def run(self) -> TrainResult:
        config = self.config
        check_push(config.push_to_hub)  # before hours of training, not after; on every rank, so that all stop alike
        if config.resume:
            self.resume(config.resume)
        if self.ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.trackers = Trackers.open(config.log, self.output_dir, config.to_dict(), start_step=self.position.global_step, is_main=self.ctx.is_main)
        completed = True
        try:
            while self.position.epoch < config.epochs:
                stats = self.train_epoch()
                if stats is None:
                    completed = False
                    break
                self._end_epoch(stats)
                if self._should_stop() and self.position.epoch < config.epochs:
                    completed = False
                    break
        except Exception as err:
            if config.compile and is_compile_failure(err):
                raise CompileUnavailableError(compile_failure_message(config.compile, err)) from err
            raise
        finally:
            self.trackers.close()
        if completed and config.push_to_hub and self.ctx.is_main:
            url = push_run(self.output_dir / "last", config.push_to_hub, f"{config.model} trained on {config.data}, {config.epochs} epoch(s)")
            self._log(f"pushed {self.output_dir / 'last'} to the Hub: {url}")
        ema_model = self.ema.module if self.ema is not None else None
        return TrainResult(self.output_dir, self.model, ema_model, self.history, self.step_losses, self.best, completed, self.ctx.is_main)


class ClassifierTrainer(ClassifierObjective, Trainer):
    """Any ``nn.Module`` that returns logits, trained with cross-entropy in this loop (deit.train.classifier_training)."""


class TeacherHeadTrainer(TeacherHeadObjective, Trainer):
    """A teacher's new head trained in this loop before the student's run (--teacher-finetune-epochs; deit.train.classifier_training)."""


def _listing(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)})" if len(names) > limit else "")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _same(a: Any, b: Any) -> bool:
    """Equal up to the tuple/list difference that a round trip through a checkpoint introduces."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@contextlib.contextmanager
def _determinism(enabled: bool):
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def fit(config: TrainConfig | None = None, *, teacher: nn.Module | None = None, train_dataset: Any = None,
        val_dataset: Any = None, **overrides: Any) -> TrainResult:
    """Train a DeiT with the recipe of Touvron et al. (2021); see :class:`TrainConfig` for the settings.

    ``fit(TrainConfig(data="mnist5k", epochs=10))`` or ``fit(data="mnist5k", epochs=10)``.
    ``teacher`` (an ``nn.Module`` mapping the student's normalised batch to logits) replaces
    ``config.teacher``; ``train_dataset``/``val_dataset`` (``(tensor, label)`` items, with a
    ``.classes`` list, transforms applied) replace ``config.data``; items labelled -1 (listed in
    the data set's ``.targets``) are images without a label, learned from the teacher only
    (``deit.train.partial_labels``). Under ``torchrun`` every process calls ``fit`` and rank 0
    writes the files.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    if teacher is not None and config.teacher is None:
        config = dataclasses.replace(config, teacher="<module>")
    return run_trainer(Trainer, config, teacher=teacher, train_dataset=train_dataset, val_dataset=val_dataset)


def run_trainer(trainer_class: type[Trainer], config: TrainConfig, *, teacher: nn.Module | None = None,
                train_dataset: Any = None, val_dataset: Any = None, **objective: Any) -> TrainResult:
    """Validate ``config``, join or start the process group, and run ``trainer_class`` to the end.
    ``objective``: arguments of ``trainer_class``'s own (``model=``, the module a :class:`ClassifierTrainer` trains)."""
    config.validate()
    if (train_dataset is None) != (val_dataset is None):
        raise ValueError("pass both train_dataset and val_dataset, or neither")
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(config.device)
    trainer = None
    try:
        with _determinism(config.deterministic), warnings.catch_warnings():
            # The [CLS] and [DIST] tokens are concatenated, so their gradients are strided views;
            # DDP copies them into its buckets correctly and only warns about the copy.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            trainer = trainer_class(config, ctx, teacher=teacher, train_set=train_dataset, val_set=val_dataset, **objective)
            return trainer.run()
    finally:
        if owns_group:
            # The DDP wrapper holds the process group, and gloo's threads live as long as the group
            # object: let the trainer go, cycles included, before destroying the group, or the
            # threads run on into interpreter exit (where they can abort it).
            del trainer
            gc.collect()
            shutdown_distributed()
