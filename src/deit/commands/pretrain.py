"""``deit pretrain``: masked-image-modeling pre-training (SimMIM) on images without labels, then
``deit train --model OUTPUT/last`` to fine-tune; one process or under torchrun."""

from __future__ import annotations

import argparse

from ..train.pretrain_recipe import PretrainConfig
from ..train.recipe import MASKED_IMAGE_MODELING_LAYER_DECAY
from .train import TRAIN_OPTIONS, add_train_options, config_from_args, epochs_text, finished_on_main

_DEFAULTS = PretrainConfig()
# The augmentation of SimMIM is a random resized crop and a flip; the label-based options of
# deit train (smoothing, mixup, teacher) do not apply.
_AUGMENTATION = ("scale", "hflip", "interpolation", "model_ema", "model_ema_decay")
_PRETRAIN_OPTIONS = {
    "model": [
        ("model", "a preset (fresh weights), e.g. deit-tiny-distilled-patch16-224, or a checkpoint whose encoder pre-training starts from", {}),
        *TRAIN_OPTIONS["model"][1:],
    ],
    "masking": [
        ("mask_patch_size", "side of the square blocks that are masked (a multiple of the patch size dividing the image size)", {"type": int}),
        ("mask_ratio", "share of the blocks of each image that are masked", {"type": float}),
        ("reconstruction_images", "validation images shown in each epoch's reconstructions.png", {"type": int}),
    ],
    "data": TRAIN_OPTIONS["data"],
    "optimisation": TRAIN_OPTIONS["optimisation"],
    "augmentation": [option for option in TRAIN_OPTIONS["augmentation and regularisation"] if option[0] in _AUGMENTATION],
    "run": TRAIN_OPTIONS["run"],
    # Layer decay is a fine-tuning rule: deit train applies it to this command's checkpoints by default.
    "speed, memory, logs and the Hub": [option for option in TRAIN_OPTIONS["speed, memory, logs and the Hub"] if option[0] != "layer_decay"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pre-train a DeiT by masked-image modeling (SimMIM) on images without labels",
        description="Pre-train a DeiT with SimMIM (Xie et al. 2022): masked patches are reconstructed from the rest. "
        "--data is mnist5k, a folder of images (labels, if any, are ignored) or hf:PATH. Fine-tune the result with "
        "deit train --model OUTPUT/last. Many processes: torchrun --nproc_per_node N -m deit pretrain ...",
    )
    add_train_options(p, _PRETRAIN_OPTIONS, _DEFAULTS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.pretraining import pretrain

    config = config_from_args(args, PretrainConfig)
    result = pretrain(config)
    if not finished_on_main(result, config, "pretrain"):
        return 0
    last = result.final_metrics
    print(f"finished {epochs_text(len(result.history))}: validation reconstruction loss {last['val_loss']:.4f} (best {result.best:.4f})")
    print(f"model: {result.output_dir / 'last'}; reconstructions: {result.output_dir / 'reconstructions.png'}; "
          f"fine-tune with: deit train --model {result.output_dir / 'last'} --data ... "
          f"(layer decay {MASKED_IMAGE_MODELING_LAYER_DECAY} by default for this encoder; --layer-decay RATE sets it)")
    return 0
