"""Training-step throughput: forward + backward + AdamW, ours against timm in the same loop.

Ours twice, from the same initial weights: with :func:`deit.train.fast_kernels.use_fast_kernels`
applied (every Linear's forward and backward matmuls on oneDNN), what ``deit train`` runs with
``--fast-kernels on`` (and with ``auto`` where :func:`~deit.train.fast_kernels.fast_kernels_pay`
says they pay, logged), and as built, on PyTorch's own kernels (``--fast-kernels off``). All
models are the distilled DeiT classifier trained on its two heads (the loss is the mean of the
[CLS] and [DIST] heads' cross-entropies, ours computes it itself from ``labels``), with the same
optimizer settings, input, threads and precision (float32, or bfloat16 autocast over float32
weights, as mixed-precision training runs), timed in one interleaved run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..modeling import DeiTForImageClassificationWithTeacher
from ..probes import fast_kernels_available
from ..train.fast_kernels import fast_kernels_pay, use_fast_kernels
from .inference import model_flops, preset_config
from .timing import interleaved

__all__ = ["train_step", "benchmark_training", "format_training_table", "IMPLEMENTATIONS"]

# Result key -> the table's name for it.
IMPLEMENTATIONS = {"ours": "ours, fast kernels (--fast-kernels on)", "ours-plain": "ours, plain PyTorch kernels", "timm": "timm"}


def _timm_loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    cls_logits, dist_logits = model(x)  # timm's distilled model returns both heads in training
    return (F.cross_entropy(cls_logits, labels) + F.cross_entropy(dist_logits, labels)) / 2


def _our_loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x, labels=labels).loss


def train_step(
    model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor, autocast: bool
) -> Callable[[], float]:
    """One optimizer step per call (AdamW, fused where the device supports it)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(x.device.type, torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            loss = loss_fn(model, x, labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def benchmark_training(
    size: str = "tiny", batch_size: int = 32, dtypes: tuple[str, ...] = ("fp32", "bf16"), device: torch.device | str = "cpu",
    rounds: int = 5, log: Callable[[str], None] = lambda _: None,
) -> list[dict[str, object]]:
    """Images/s of a training step for ours with the fast kernels (where this PyTorch has them),
    ours on PyTorch's kernels and (when installed) timm, per precision."""
    device = torch.device(device)
    config = preset_config(size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=gen).to(device)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=gen).to(device)
    try:
        import timm
    except ImportError:
        timm = None
        log("timm: not installed, ours alone")
    results = []
    fast = fast_kernels_available() and device.type == "cpu"
    if not fast:
        log("fast kernels: not available here (CPU and oneDNN's matmul needed), ours on PyTorch's kernels only")
    for dtype in dtypes:
        autocast = dtype == "bf16"
        compute_dtype = torch.bfloat16 if autocast else torch.float32
        candidates = {}
        if fast:
            torch.manual_seed(0)
            ours = DeiTForImageClassificationWithTeacher(config).to(device)
            use_fast_kernels(ours, dtype=compute_dtype)
            candidates["ours"] = train_step(ours, _our_loss, x, labels, autocast)
            log(f"{dtype}: deit train --fast-kernels auto would train with them {'on' if fast_kernels_pay('auto', compute_dtype, device) else 'off'} here")
        torch.manual_seed(0)  # the same initial weights
        plain = DeiTForImageClassificationWithTeacher(config).to(device)
        candidates["ours-plain"] = train_step(plain, _our_loss, x, labels, autocast)
        if timm is not None:
            peer = timm.create_model(f"deit_{size}_distilled_patch16_224", pretrained=False).to(device)
            peer.set_distilled_training(True)  # return both heads' logits, as ours trains
            candidates["timm"] = train_step(peer, _timm_loss, x, labels, autocast)
        log(f"training step DeiT-{size} batch {batch_size} {dtype}: {len(candidates)} candidates x {rounds} rounds")
        timings = interleaved(candidates, rounds=rounds, device=device)
        for name, timing in timings.items():
            results.append({"implementation": name, "dtype": dtype, "images_per_s": batch_size / timing.best,
                            "median_images_per_s": batch_size / timing.median, "quiet_rounds": f"{timing.quiet_rounds}/{rounds}"})
    flops = 3 * model_flops(config)  # forward + backward (about twice the forward)
    for row in results:
        row["gflops"] = row["images_per_s"] * flops / 1e9
    return results


def format_training_table(results: list[dict[str, object]], size: str, batch_size: int) -> str:
    """Best-round images/s per implementation and precision, with the ratios to timm and to ours on
    PyTorch's kernels (best rounds; the median rounds' ratio to the latter in parentheses)."""
    lines = ["| model | batch | precision | implementation | images/s | vs timm | vs ours plain (median) | GFLOP/s (3x forward) | quiet rounds |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for dtype in dict.fromkeys(r["dtype"] for r in results):
        rows = [r for r in results if r["dtype"] == dtype]
        by_name = {r["implementation"]: r for r in rows}
        timm, plain = by_name.get("timm"), by_name.get("ours-plain")
        precision = "bf16 autocast" if dtype == "bf16" else dtype
        for r in rows:
            vs_timm = f"{r['images_per_s'] / timm['images_per_s']:.2f}x" if timm else ""
            vs_plain = (f"{r['images_per_s'] / plain['images_per_s']:.2f}x ({r['median_images_per_s'] / plain['median_images_per_s']:.2f}x)"
                        if plain else "")
            name = IMPLEMENTATIONS.get(r["implementation"], r["implementation"])
            lines.append(f"| DeiT-{size[0].upper()} | {batch_size} | {precision} | {name} | {r['images_per_s']:.1f} | {vs_timm} | {vs_plain} "
                         f"| {r['gflops']:.0f} | {r['quiet_rounds']} |")
    return "\n".join(lines)
