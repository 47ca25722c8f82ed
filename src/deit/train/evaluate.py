"""Top-1 / top-5 accuracy and loss of a classifier over a data loader, on one process or many.

For a distilled DeiT (an output with ``cls_logits`` and ``distillation_logits``) the CLS head,
the distillation head and their average (the model's prediction) are scored separately.

Under torch.distributed every rank evaluates its shard and the counts are summed over ranks at
the end (one all_reduce; every rank must call :func:`evaluate`). Use
:class:`deit.train.samplers.ShardedEvalSampler` for the shards: it gives each sample to exactly
one rank, whereas ``DistributedSampler`` pads with repeated samples (a warning says so).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["evaluate", "format_metrics"]

# Where each head's counts sit in the reduced vector.
_HEADS = ("", "_cls", "_dist")
_N, _LOSS, _TWO_HEADS = 0, 1, 2
_FIRST_COUNT = 3  # then (correct@1, correct@5) for each of _HEADS


def _head_logits(output: Any) -> dict[str, torch.Tensor]:
    from .teacher import logits_of

    cls_logits = getattr(output, "cls_logits", None)
    dist_logits = getattr(output, "distillation_logits", None)
    if cls_logits is not None and dist_logits is not None:
        return {"": (cls_logits + dist_logits) / 2, "_cls": cls_logits, "_dist": dist_logits}
    return {"": logits_of(output)}


def _warn_if_padded(loader: Iterable) -> None:
    from torch.utils.data import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last and len(sampler.dataset) % sampler.num_replicas:
        warnings.warn(
            "evaluating with a DistributedSampler, which repeats samples to even out the ranks: the metrics count "
            "those twice; use deit.train.samplers.ShardedEvalSampler",
            stacklevel=3,
        )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _reduce(totals: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        reduced = totals.to(on)
        dist.all_reduce(reduced)
        return reduced.cpu()
    return totals


def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> dict[str, float]:
    """Metrics over ``loader`` (batches of ``(pixel_values, class indices)``, or None for a batch
    left empty by corrupt images), in percent.

    Keys: ``acc1``, ``acc5`` (top-min(5, classes)), ``loss`` (mean cross-entropy of the
    prediction), ``num_samples``; for a distilled DeiT also ``acc1_cls``, ``acc5_cls``,
    ``acc1_dist``, ``acc5_dist`` (``acc1``/``acc5`` then score the averaged heads).
    ``dtype`` float16/bfloat16 runs the model under autocast. The model's train/eval mode is
    restored afterwards; a DistributedDataParallel wrapper is looked through, so no collective
    runs per batch and ranks may hold different numbers of batches.
    """
    device = torch.device(device)
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    was_training = module.training
    module.eval()
    _warn_if_padded(loader)
    totals = torch.zeros(_FIRST_COUNT + 2 * len(_HEADS), dtype=torch.float64)
    try:
        for batch in loader:
            if batch is None:
                continue  # every image of the batch was corrupt and left out (data.collate_readable)
            images, labels = batch
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if labels.ndim != 1:
                raise ValueError(f"evaluate expects class indices, got labels of shape {tuple(labels.shape)}")
            with torch.inference_mode(), _autocast(device, dtype):
                heads = _head_logits(module(images))
            totals[_N] += len(labels)
            totals[_LOSS] += float(F.cross_entropy(heads[""].float(), labels, reduction="sum"))
            totals[_TWO_HEADS] = max(float(totals[_TWO_HEADS]), float(len(heads) > 1))
            for i, name in enumerate(_HEADS):
                if name not in heads:
                    continue
                k = min(5, heads[name].shape[-1])
                top = heads[name].float().topk(k, dim=-1).indices
                hits = top == labels.unsqueeze(1)
                totals[_FIRST_COUNT + 2 * i] += float(hits[:, 0].sum())
                totals[_FIRST_COUNT + 2 * i + 1] += float(hits.any(dim=1).sum())
    finally:
        module.train(was_training)

    totals = _reduce(totals)
    n = float(totals[_N])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    two_heads = float(totals[_TWO_HEADS]) > 0
    metrics: dict[str, float] = {}
    for i, name in enumerate(_HEADS):
        if name and not two_heads:
            continue
        metrics[f"acc1{name}"] = 100.0 * float(totals[_FIRST_COUNT + 2 * i]) / n
        metrics[f"acc5{name}"] = 100.0 * float(totals[_FIRST_COUNT + 2 * i + 1]) / n
    metrics["loss"] = float(totals[_LOSS]) / n
    metrics["num_samples"] = int(n)
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """A small text table: one row per head (averaged / CLS / distillation), top-1 and top-5."""
    rows = [("head", "top-1 %", "top-5 %")]
    labels = {"": "prediction (CLS+DIST)/2" if "acc1_cls" in metrics else "prediction", "_cls": "CLS head", "_dist": "distillation head"}
    for name, label in labels.items():
        if f"acc1{name}" in metrics:
            rows.append((label, f"{metrics[f'acc1{name}']:.2f}", f"{metrics[f'acc5{name}']:.2f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>8}  {r[2]:>8}" for r in rows]
    lines.append(f"{int(metrics['num_samples'])} images, loss {metrics['loss']:.4f}")
    return "\n".join(lines)
