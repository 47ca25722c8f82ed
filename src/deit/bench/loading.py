"""Image-loading throughput from JPEG files on disk, decode included: ours against transformers.

Every candidate turns the same list of files into normalized (n, 3, 224, 224) float32 batches:

* transformers' DeiT image processors (the torchvision backend, its default, and the PIL one),
  fed PIL images opened from the files by :func:`deit.images.open_rgb` (upright and RGB, as
  ``transformers.image_utils.load_image`` opens them);
* ours: :func:`deit.loading.load_batches` (decode/resize/crop in DataLoader workers, uint8) and
  :func:`deit.loading.to_model_input` (lookup-table normalize of the whole batch), with each
  resize kernel (Pillow's, or torchvision's as transformers' default processor uses), with and
  without the reduced-size JPEG decode (``draft``), in the main process alone, and with
  threads instead of worker processes.

Accuracy is reported in 8-bit levels: the largest and mean per-pixel difference of the outputs
mapped back to the 0..255 scale, against the transformers outputs and (for ``draft``) against
our default output.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..images import open_rgb
from ..loading import RESIZE_KERNELS, load_batches, to_model_input
from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DeiTImageProcessor
from .photos import write_jpeg_set
from .timing import interleaved

__all__ = ["benchmark_loading", "format_loading_table", "level_difference"]


def _hf_processors() -> dict[str, Callable[[list[Image.Image]], torch.Tensor]]:
    try:
        import transformers
    except ImportError:
        return {}
    stats = dict(image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))
    found = {}
    for label, name in (("transformers (torchvision backend)", "DeiTImageProcessor"), ("transformers (PIL backend)", "DeiTImageProcessorPil")):
        cls = getattr(transformers, name, None)
        if cls is not None:
            processor = cls(**stats)
            found[label] = lambda images, p=processor: p(images, return_tensors="pt")["pixel_values"]
    return found


def level_difference(a: torch.Tensor, b: torch.Tensor, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> tuple[float, float]:
    """(max, mean) absolute difference of two normalized batches, in 8-bit levels."""
    scale = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) * 255
    levels = ((a.double() - b.double()).abs() * scale)
    return float(levels.max()), float(levels.mean())


def benchmark_loading(
    num_images: int = 256, batch_size: int = 32, num_workers: int | None = None, rounds: int = 3,
    folder: str | None = None, long_side: tuple[int, int] = (320, 640), log: Callable[[str], None] = lambda _: None,
) -> dict[str, object]:
    """Images/s of each candidate over the whole set, and the accuracy numbers."""
    processor = DeiTImageProcessor()
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(Path(folder).glob("*.jp*g")) if folder else write_jpeg_set(tmp, num_images, long_side=long_side)
        if not paths:
            raise FileNotFoundError(f"no JPEG files in {folder}")
        log(f"{len(paths)} JPEG files, batch {batch_size}")
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

        def ours(resize: str, draft: bool = False, workers: int | None = num_workers, threads: int = 1) -> Callable[[], list[torch.Tensor]]:
            def run() -> list[torch.Tensor]:
                batches = load_batches(paths, processor, batch_size, workers, draft=draft, threads=threads, resize=resize)
                return [to_model_input(b.pixels, processor) for b in batches]
            return run

        def theirs(process: Callable[[list[Image.Image]], torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
            return lambda: [process([open_rgb(p) for p in batch]) for batch in batches]

        cores = os.cpu_count() or 1
        candidates = {}
        for resize in RESIZE_KERNELS:
            candidates[f"ours, {resize} resize"] = ours(resize)
            candidates[f"ours, {resize} resize, draft"] = ours(resize, draft=True)
            candidates[f"ours, {resize} resize, main process only"] = ours(resize, workers=0)
            candidates[f"ours, {resize} resize, {cores} threads in the main process"] = ours(resize, workers=0, threads=cores)
        hf = _hf_processors()
        candidates.update({label: theirs(fn) for label, fn in hf.items()})
        outputs = {name: torch.cat(fn()) for name, fn in candidates.items()}
        log(f"timing {len(candidates)} candidates x {rounds} rounds")
        timings = interleaved(candidates, rounds=rounds, warmup=0)
    rates = {name: len(paths) / t.best for name, t in timings.items()}
    quiet = next(iter(timings.values())).quiet_rounds
    accuracy = {f"ours, {resize} resize vs {label}": level_difference(outputs[f"ours, {resize} resize"], outputs[label])
                for resize in RESIZE_KERNELS for label in hf}
    for resize in RESIZE_KERNELS:
        accuracy[f"ours, {resize} resize, draft vs without draft"] = level_difference(outputs[f"ours, {resize} resize, draft"], outputs[f"ours, {resize} resize"])
    return {"images": len(paths), "batch_size": batch_size, "rates": rates, "accuracy": accuracy, "outputs": outputs,
            "quiet_rounds": f"{quiet}/{rounds}"}


def format_loading_table(result: dict[str, object]) -> str:
    rates: dict[str, float] = result["rates"]
    peers = [v for k, v in rates.items() if k.startswith("transformers")]
    best_peer = max(peers) if peers else None
    lines = [f"{result['images']} JPEG files, batch {result['batch_size']}, quiet rounds {result['quiet_rounds']}", "",
             "| loader | images/s | vs best transformers |", "|---|---:|---:|"]
    for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
        ratio = f"{rate / best_peer:.2f}x" if best_peer else ""
        lines.append(f"| {name} | {rate:.1f} | {ratio} |")
    lines += ["", "| output compared | max difference (8-bit levels) | mean difference (levels) |", "|---|---:|---:|"]
    for name, (worst, mean) in result["accuracy"].items():
        lines.append(f"| {name} | {worst:.3f} | {mean:.4f} |")
    return "\n".join(lines)
