"""``deit train``: the DeiT recipe (Touvron et al. 2021) with the authors' defaults, on one process or under torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..losses import KL_REDUCTIONS
from ..model_rules import DISTILLATION_TYPES
from ..train.fast_kernels import FAST_KERNEL_SETTINGS
from ..train.recipe import AMP_CHOICES, LOG_CHOICES, MASKED_IMAGE_MODELING_LAYER_DECAY, TrainConfig

_DEFAULTS = TrainConfig()

# (field, help, extra argparse options). Flags are the field names with dashes; a flag that is
# not given keeps the TrainConfig default, so the defaults live in one place.
TRAIN_OPTIONS: dict[str, list[tuple[str, str, dict]]] = {
    "model": [
        ("model", "what to start from: a checkpoint to fine-tune (a folder, a weights file, or a Hub name with its owner, "
         "e.g. facebook/deit-tiny-distilled-patch16-224: its weights are loaded, offline from the cache), or a bare preset "
         "name, e.g. deit-tiny-distilled-patch16-224: that architecture with RANDOM weights (training from scratch)", {}),
        ("image_size", "input resolution; fine-tuning at a new one resamples the position embeddings", {"type": int}),
        ("patch_size", "patch size of a fresh model", {"type": int}),
        ("hidden_size", "width of a fresh model (intermediate size = mlp ratio x width)", {"type": int}),
        ("depth", "number of transformer blocks of a fresh model", {"type": int}),
        ("heads", "attention heads of a fresh model", {"type": int}),
        ("mlp_ratio", "MLP width / model width for --hidden-size", {"type": float}),
        ("drop_path", "stochastic depth rate", {"type": float}),
    ],
    "data": [
        ("data", "mnist5k (built in), an ImageFolder folder, or hf:PATH (a datasets.save_to_disk folder)", {}),
        ("val_data", "validation data (default: the val split of --data)", {}),
        ("num_workers", "DataLoader worker processes (default: up to 4, one CPU core left to the training process)", {"type": int}),
        ("mean", "normalisation mean per channel", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("std", "normalisation std per channel", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("crop_pct", "eval transform: resize the shorter side to size/crop_pct, then center crop", {"type": float}),
    ],
    # Few labels, many images without: the DIST head learns the teacher on all of them (deit.train.partial_labels).
    "partly labelled data": [
        ("unlabeled", "images without labels, learned from the teacher: a folder (searched recursively) or hf:PATH; "
         "needs --teacher", {"metavar": "SRC"}),
        ("labels_per_class", "keep the labels of the first N training images of each class of --data; with a teacher "
         "the rest are used without their labels, without one they are left out", {"type": int, "metavar": "N"}),
        ("unlabeled_cls_teacher", "on images without labels, also train the CLS head on the teacher's hard label "
         "(the DIST head always learns the teacher there)", {"action": argparse.BooleanOptionalAction}),
    ],
    "optimisation": [
        ("epochs", "training epochs", {"type": int}),
        ("batch_size", "images per process per step", {"type": int}),
        ("accum_steps", "gradient accumulation steps", {"type": int}),
        ("lr", "base learning rate for a global batch of 512 (scaled linearly)", {"type": float}),
        ("min_lr", "learning rate at the end of the cosine", {"type": float}),
        ("warmup_lr", "learning rate at the start of the warm-up", {"type": float}),
        ("warmup_epochs", "linear warm-up length in epochs (default: the recipe's 5, at most a fifth of the run in whole epochs)", {"type": float}),
        ("lr_per_step", "update the learning rate every step (default: every epoch, as the authors)", {"action": argparse.BooleanOptionalAction}),
        ("weight_decay", "AdamW weight decay (not on biases, norms, tokens, position embeddings)", {"type": float}),
        ("clip_grad", "clip the gradient norm to this value", {"type": float}),
        ("amp", "mixed precision", {"choices": AMP_CHOICES}),
    ],
    "augmentation and regularisation": [
        ("smoothing", "label smoothing", {"type": float}),
        ("mixup", "mixup alpha (0 turns it off)", {"type": float}),
        ("cutmix", "cutmix alpha (0 turns it off)", {"type": float}),
        ("mixup_prob", "probability of mixing a batch", {"type": float}),
        ("mixup_switch_prob", "probability of cutmix instead of mixup when both are on", {"type": float}),
        ("aa", "RandAugment policy, or none", {}),
        ("color_jitter", "color jitter strength (only without RandAugment)", {"type": float}),
        ("reprob", "random erasing probability", {"type": float}),
        ("remode", "random erasing fill: pixel, rand or const", {}),
        ("hflip", "horizontal flip probability", {"type": float}),
        ("scale", "random resized crop area range", {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")}),
        ("interpolation", "resize interpolation", {}),
        ("repeated_aug", "repeated augmentation sampler", {"action": argparse.BooleanOptionalAction}),
        ("num_repeats", "repeats per image with --repeated-aug", {"type": int}),
        ("model_ema", "keep an exponential moving average of the weights, saved as ema/ (default: on when the run is long "
         "enough for the average to leave the initial weights at --model-ema-decay, else off with a note)", {"action": argparse.BooleanOptionalAction}),
        ("model_ema_decay", "EMA decay per step", {"type": float}),
    ],
    "distillation": [
        ("teacher", "teacher: our checkpoint, hf:NAME_OR_DIR (a transformers image classifier, fed by its own "
         "preprocessor_config.json), torchvision:NAME, timm:NAME, a TorchScript/torch.export file, or module:callable", {}),
        ("teacher_weights", "weights file for the teacher", {}),
        ("teacher_input_size", "resize the student's batch to this size for the teacher (default: the size our checkpoint "
         "teacher was trained at; for torchvision:/timm: with --teacher-weights, the student's batch as it is)", {"type": int}),
        ("teacher_mean", "the teacher's normalisation mean (default: our checkpoint teacher's own, else the student's --mean)",
         {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("teacher_std", "the teacher's normalisation std (default: our checkpoint teacher's own, else the student's --std)",
         {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("distillation_type", "hard, soft or none (default: hard with a teacher, none without)", {"choices": DISTILLATION_TYPES}),
        ("distillation_alpha", "weight of the distillation loss", {"type": float}),
        ("distillation_tau", "temperature of soft distillation", {"type": float}),
        ("distillation_kl_reduction", "how soft distillation averages its KL: mean (over batch x classes, as the DeiT authors) "
         "or batchmean (per image, as Hinton et al. and timm: classes times stronger); default: mean, batchmean when the "
         "data has images without labels", {"choices": KL_REDUCTIONS}),
        ("teacher_finetune_epochs", "first adapt the teacher's head to these classes for N epochs", {"type": int}),
        ("teacher_finetune_lr", "learning rate of that adaptation", {"type": float}),
        ("teacher_cache", "read the teacher's logits of every view from this folder, written by deit teacher-cache with the "
         "same options; the teacher is not loaded, and a cache made for other views is refused", {"metavar": "DIR"}),
    ],
    "run": [
        ("output", "output folder (checkpoint.pt, best/, last/, metrics.jsonl, curves.png); one that holds a run is "
         "refused unless --resume or --overwrite", {}),
        ("resume", "continue a run from its checkpoint (file or folder; no value: OUTPUT/checkpoint.pt) with the run's own "
         "settings; options given here override them (said so)", {"nargs": "?", "const": "auto", "metavar": "PATH"}),
        ("overwrite", "start afresh in an --output folder that holds a run: its checkpoint, metrics and models are deleted",
         {"action": argparse.BooleanOptionalAction}),
        ("seed", "random seed", {"type": int}),
        ("deterministic", "deterministic algorithms (slower; exact reruns)", {"action": argparse.BooleanOptionalAction}),
        ("device", "auto, cpu, cuda, cuda:N", {}),
        ("fast_kernels", "the student's Linear layers on oneDNN in forward and backward (CPU): on, off, or auto "
         "(on the CPU where they beat PyTorch's kernels, measured: bf16 autocast where PyTorch's bf16 matmul is slow, "
         "float32 where oneDNN's matmul is 1.5x PyTorch's)", {"choices": FAST_KERNEL_SETTINGS}),
        ("checkpoint_every_steps", "also checkpoint every N optimizer steps inside an epoch", {"type": int}),
        ("stop_after_steps", "stop after N optimizer steps (with a checkpoint to resume from)", {"type": int}),
        ("save_hf_every_epoch", "write last/ in the Hugging Face layout after every epoch", {"action": argparse.BooleanOptionalAction}),
        ("progress", "progress bar", {"action": argparse.BooleanOptionalAction}),
    ],
    # The switches of timm's train.py and the transformers Trainer (README: coming from timm's train.py).
    "speed, memory, logs and the Hub": [
        ("compile", "torch.compile the student and an online teacher with this backend (no value: inductor); where the "
         "platform cannot compile, the run stops with the reason before training", {"nargs": "?", "const": "inductor", "metavar": "BACKEND"}),
        ("grad_checkpointing", "recompute each block's activations in the backward pass: less memory, about a third more compute",
         {"action": argparse.BooleanOptionalAction}),
        ("layer_decay", "layer-wise learning-rate decay: block i of N trains at RATE^(N-i) times the rate, the embeddings and "
         f"tokens at RATE^(N+1), the heads at the full rate (default: off; SimMIM fine-tunes a masked-image-modeling ViT-B "
         f"with {MASKED_IMAGE_MODELING_LAYER_DECAY}, and a note says so when --model is a deit pretrain checkpoint)", {"type": float, "metavar": "RATE"}),
        ("log", "also log the metrics per step and per epoch to tensorboard (OUTPUT/tensorboard) and/or wandb (OUTPUT/wandb) "
         "(default: neither); --report-to is the same option (the Trainer's name; under torchrun, whose parser takes --log "
         "for its own --log-dir, use --report-to)", {"nargs": "+", "choices": LOG_CHOICES, "aliases": ("--report-to",)}),
        ("push_to_hub", "at the end, upload last/ (weights, preprocessor config, model card) to this Hub repository "
         "(checked before training: a token, not offline)", {"metavar": "REPO"}),
    ],
}


def add_train_options(parser: argparse.ArgumentParser, options: dict[str, list[tuple[str, str, dict]]] | None = None,
                      defaults: TrainConfig = _DEFAULTS) -> None:
    """One flag per config field in ``options`` (default: all of ``deit train``'s), shown with ``defaults``."""
    for title, group_options in (options or TRAIN_OPTIONS).items():
        group = parser.add_argument_group(title)
        for name, help_text, extra in group_options:
            extra = dict(extra)
            aliases = extra.pop("aliases", ())
            default = getattr(defaults, name)
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            # A help text that explains its own default (or a setting that is off unless given) shows no value.
            if "(default" not in help_text and default is not None:
                help_text = f"{help_text} (default: {shown})"
            group.add_argument(f"--{name.replace('_', '-')}", *aliases, dest=name, default=argparse.SUPPRESS, help=help_text, **extra)


def config_from_args(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The run's settings: the options given on the command line over the defaults, or, with
    --resume, over the settings saved in the run's checkpoint."""
    from ..train.checkpointing import resumed_config

    fields = {f.name for f in dataclasses.fields(config_class)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields}
    if given.get("aa") == "none":
        given["aa"] = None
    if given.get("resume"):
        config, note = resumed_config(config_class, given)
        print(note, file=sys.stderr)
        return config
    return config_class(**given)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a DeiT, with or without a teacher",
        description="Train or fine-tune a DeiT with the recipe of Touvron et al. (2021). "
        "Many processes: torchrun --nproc_per_node N -m deit train ...",
    )
    add_train_options(p)
    p.set_defaults(func=run)


def epochs_text(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def finished_on_main(result: Any, config: TrainConfig, command: str) -> bool:
    """Whether to report a finished run: rank 0 of a run that was not stopped early (then say how to continue)."""
    if result.is_main and not result.completed:
        print(f"stopped after {config.stop_after_steps} steps; continue with: deit {command} ... --output {config.output} --resume", file=sys.stderr)
    return result.is_main and result.completed


def run(args: argparse.Namespace) -> int:
    from ..train.engine import fit

    config = config_from_args(args)
    result = fit(config)
    if not finished_on_main(result, config, "train"):
        return 0
    last = result.final_metrics
    heads = "  ".join(f"{label} {last[key]:.2f}" for key, label in (("val_acc1", "top-1"), ("val_acc1_cls", "CLS"), ("val_acc1_dist", "DIST"), ("val_acc5", "top-5")) if key in last)
    print(f"finished {epochs_text(len(result.history))}: {heads}; best top-1 {result.best:.2f}")
    corrupt = last.get("train_corrupt_images", 0) + last.get("val_corrupt_images", 0)
    if corrupt:
        print(f"deit train: warning: {corrupt} unreadable image(s) were skipped (named above)", file=sys.stderr)
    print(f"model: {result.output_dir / 'best'} (best), {result.output_dir / 'last'} (last); metrics: {result.output_dir / 'metrics.jsonl'}")
    return 0
