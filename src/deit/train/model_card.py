"""The model card of a trained checkpoint (``best/``, ``last/``, ``ema/``: ``README.md``), and ``--push-to-hub``.

The card is what the ``transformers`` Trainer writes beside its checkpoints: Hugging Face
metadata in YAML front matter (``library_name``, ``tags``, ``datasets``, ``base_model``, a
``model-index`` with each head's validation top-1) that ``huggingface_hub.ModelCard.load``
reads, then the facts in prose and tables: where the weights started, the teacher and its
distillation settings, the training hyper-parameters, the epoch's results.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..hf_api import check_hub_upload, upload_folder_to_hub
from ..atomic import atomic_write_text
from .recipe import TrainConfig
from .student import is_preset

MODEL_CARD_NAME = "README.md"
# A Hub repository id (owner/name), as opposed to a local path or a bare preset name.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The heads' validation top-1 in a metrics.jsonl entry, and how the card names them.
HEAD_METRICS = (("acc1", "top-1 (CLS and DIST heads averaged)"), ("acc1_cls", "top-1 (CLS head)"), ("acc1_dist", "top-1 (DIST head)"))
# The settings shown in the hyper-parameter table, in the order the recipe lists them.
HYPER_PARAMETERS = (
    "epochs", "batch_size", "accum_steps", "lr", "min_lr", "warmup_lr", "warmup_epochs", "lr_per_step", "weight_decay",
    "layer_decay", "clip_grad", "amp", "drop_path", "smoothing", "mixup", "cutmix", "aa", "reprob", "repeated_aug",
    "model_ema", "model_ema_decay", "image_size", "seed",
)


def base_model_of(config: TrainConfig) -> str | None:
    """The Hub repository the weights started from, or None (a fresh preset, a local checkpoint)."""
    if is_preset(config.model) or Path(config.model).exists():
        return None
    return config.model if _REPO_ID.match(config.model) else None


def dataset_name(config: TrainConfig) -> str:
    data = config.data.removeprefix("hf:")
    return Path(data).name if Path(data).exists() else data


def model_card_text(config: TrainConfig, entry: dict[str, Any], *, which: str, model_name: str, task: str = "image-classification",
                    settings: dict[str, Any] | None = None) -> str:
    """The README.md of checkpoint ``which`` (best, last, ema) after the epoch of ``entry``;
    ``settings`` adds resolved values the config leaves to the engine (e.g. the layer decay used)."""
    from huggingface_hub import EvalResult, ModelCardData

    settings = {**{name: getattr(config, name) for name in HYPER_PARAMETERS}, **(settings or {})}
    # The epoch's metrics of these weights: the EMA's for ema/, the trained weights' otherwise.
    prefix = "ema_" if which == "ema" else "val_"
    heads = [(label, entry[prefix + key]) for key, label in HEAD_METRICS if prefix + key in entry]
    data_name = dataset_name(config)
    distills = config.resolved_distillation_type != "none"
    tags = ["deit", "vision", task, *(["knowledge-distillation"] if distills else []),
            *(["masked-image-modeling"] if task != "image-classification" else [])]
    results = [
        EvalResult(task_type=task, dataset_type=data_name, dataset_name=data_name, dataset_split="validation",
                   metric_type="accuracy", metric_name=label, metric_value=round(float(value), 4))
        for label, value in heads
    ]
    card_data = ModelCardData(
        library_name="deit", pipeline_tag=task if task == "image-classification" else None, tags=tags, datasets=[data_name],
        base_model=base_model_of(config), model_name=model_name, eval_results=results or None, metrics=["accuracy"] if results else None,
    )
    lines = [f"---\n{card_data.to_yaml()}\n---", "", f"# {model_name}", ""]
    start = f"fresh weights ({config.model} architecture)" if is_preset(config.model) else f"the checkpoint `{config.model}`"
    how = ("trained with `deit train`" if task == "image-classification"
           else "pre-trained by masked-image modeling (SimMIM, `deit pretrain`, no labels read)")
    lines.append(f"A DeiT {how} on `{data_name}` from {start}. This folder holds the `{which}` weights, "
                 f"after epoch {entry.get('epoch', 0) + 1} of {config.epochs}. Load it with "
                 "`deit.AutoModelForImageClassification.from_pretrained(FOLDER)`; `deit predict --model FOLDER IMAGE` classifies images.")
    lines += ["", "## Results (validation)", "", "| metric | value |", "| --- | --- |"]
    shown = heads + [(key, entry[key]) for key in (prefix + "acc5", prefix + "loss", "train_loss") if key in entry]
    lines += [f"| {label} | {float(value):.4g} |" for label, value in shown]
    lines += ["", "## Teacher and distillation", ""]
    if distills:
        lines += ["| setting | value |", "| --- | --- |", f"| teacher | `{config.teacher}` |",
                  f"| distillation type | {config.resolved_distillation_type} |", f"| alpha | {config.distillation_alpha} |",
                  f"| tau | {config.distillation_tau} |", f"| teacher head fine-tuning epochs | {config.teacher_finetune_epochs} |"]
    else:
        lines.append("No teacher: trained on the labels alone." if task == "image-classification" else "No teacher.")
    lines += ["", "## Training hyper-parameters", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {name} | {_shown(value)} |" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, text: str) -> None:
    atomic_write_text(folder / MODEL_CARD_NAME, text)


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def push_run(folder: Path, repo_id: str, what: str) -> str:
    """Upload a saved checkpoint folder (weights, configs, model card) to ``repo_id``; the commit URL."""
    return upload_folder_to_hub(folder, repo_id, commit_message=f"deit: {what}")


def check_push(repo_id: str | None) -> None:
    """Before training: refuse ``--push-to-hub`` where the upload at the end could not work."""
    if repo_id is not None:
        check_hub_upload(repo_id)
