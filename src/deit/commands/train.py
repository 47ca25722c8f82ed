"""``deit train``: the DeiT recipe (Touvron et al. 2021) with the authors' defaults, on one process or under torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..train.recipe import AMP_CHOICES, DISTILLATION_CHOICES, FAST_KERNEL_CHOICES, TrainConfig

_DEFAULTS = TrainConfig()

# (field, help, extra argparse options). Flags are the field names with dashes; a flag that is
# not given keeps the TrainConfig default, so the defaults live in one place.
TRAIN_OPTIONS: dict[str, list[tuple[str, str, dict]]] = {
    "model": [
        ("model", "a preset (fresh weights), e.g. deit-tiny-distilled-patch16-224, or a checkpoint to fine-tune from", {}),
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
        ("num_workers", "DataLoader worker processes", {"type": int}),
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
        ("warmup_epochs", "linear warm-up length in epochs", {"type": float}),
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
        ("model_ema", "keep an exponential moving average of the weights", {"action": argparse.BooleanOptionalAction}),
        ("model_ema_decay", "EMA decay per step", {"type": float}),
    ],
    "distillation": [
        ("teacher", "teacher: our checkpoint, torchvision:NAME, timm:NAME, a TorchScript/torch.export file, or module:callable", {}),
        ("teacher_weights", "weights file for the teacher", {}),
        ("teacher_input_size", "the teacher's own input resolution", {"type": int}),
        ("teacher_mean", "the teacher's normalisation mean", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("teacher_std", "the teacher's normalisation std", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
        ("distillation_type", "hard, soft or none (default: hard with a teacher, none without)", {"choices": DISTILLATION_CHOICES}),
        ("distillation_alpha", "weight of the distillation loss", {"type": float}),
        ("distillation_tau", "temperature of soft distillation", {"type": float}),
        ("teacher_finetune_epochs", "first adapt the teacher's head to these classes for N epochs", {"type": int}),
        ("teacher_finetune_lr", "learning rate of that adaptation", {"type": float}),
    ],
    "run": [
        ("output", "output folder (checkpoint.pt, best/, last/, metrics.jsonl, curves.png)", {}),
        ("resume", "continue from a checkpoint (file or folder; no value: OUTPUT/checkpoint.pt)", {"nargs": "?", "const": "auto", "metavar": "PATH"}),
        ("seed", "random seed", {"type": int}),
        ("deterministic", "deterministic algorithms (slower; exact reruns)", {"action": argparse.BooleanOptionalAction}),
        ("device", "auto, cpu, cuda, cuda:N", {}),
        ("fast_kernels", "the student's Linear layers on oneDNN in forward and backward (CPU): on, off, or auto "
         "(on the CPU where they beat PyTorch's kernels, measured: bf16 autocast where PyTorch's bf16 matmul is slow, "
         "float32 where oneDNN's matmul is 1.5x PyTorch's)", {"choices": FAST_KERNEL_CHOICES}),
        ("checkpoint_every_steps", "also checkpoint every N optimizer steps inside an epoch", {"type": int}),
        ("stop_after_steps", "stop after N optimizer steps (with a checkpoint to resume from)", {"type": int}),
        ("save_hf_every_epoch", "write last/ in the Hugging Face layout after every epoch", {"action": argparse.BooleanOptionalAction}),
        ("progress", "progress bar", {"action": argparse.BooleanOptionalAction}),
    ],
}


def add_train_options(parser: argparse.ArgumentParser, options: dict[str, list[tuple[str, str, dict]]] | None = None,
                      defaults: TrainConfig = _DEFAULTS) -> None:
    """One flag per config field in ``options`` (default: all of ``deit train``'s), shown with ``defaults``."""
    for title, group_options in (options or TRAIN_OPTIONS).items():
        group = parser.add_argument_group(title)
        for name, help_text, extra in group_options:
            default = getattr(defaults, name)
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})", **extra)


def config_from_args(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(config_class)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields}
    if given.get("aa") == "none":
        given["aa"] = None
    return config_class(**given)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a DeiT, with or without a teacher",
        description="Train or fine-tune a DeiT with the recipe of Touvron et al. (2021). "
        "Many processes: torchrun --nproc_per_node N -m deit train ...",
    )
    add_train_options(p)
    p.set_defaults(func=run)


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
    print(f"finished {len(result.history)} epochs: {heads}; best top-1 {result.best:.2f}")
    corrupt = last.get("train_corrupt_images", 0) + last.get("val_corrupt_images", 0)
    if corrupt:
        print(f"deit train: warning: {corrupt} unreadable image(s) were skipped (named in the warnings above)", file=sys.stderr)
    print(f"model: {result.output_dir / 'best'} (best), {result.output_dir / 'last'} (last); metrics: {result.output_dir / 'metrics.jsonl'}")
    return 0
