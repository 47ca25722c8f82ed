"""The teacher-logit cache (``deit teacher-cache``): student images/s with no teacher, with the
teacher online, and from the cache, in one interleaved run; the cache's build time and size; and
the KL of the top-K soft target to the teacher's full softmax on the built-in data.

Two set-ups:

* **ImageNet-sized**: a DeiT-Ti student (1000 classes, 224 px, batch 32) with a torchvision
  ResNet-50 teacher (random weights: the timing does not depend on them), the recipe's mixup/cutmix,
  on in-memory images (no decoding: the step's compute is what is timed); K = 10 of 1000.
* **the demo**: ``deit demo``'s distilled student (mnist5k, 28 px, batch 16, 40 labels per class)
  with its SmallConvNet teacher, on 800 of the training digits; K = every class (10).

Each mode is a Trainer of the same settings; a turn is one epoch of it, the modes take turns
(``--rounds`` rounds, the order rotating), and a step's time is the interval between the starts
of successive batches (loading, forward, backward, AdamW: everything), the first of each turn left
out. The KL part trains the demo's teacher briefly on mnist5k and compares, on the training views,
its softmax with the target rebuilt from its top K (deit.train.teacher_cache.logits_from_top_k).

    .venv/bin/python benchmarks/teacher_cache.py [--rounds 3] [--skip-resnet] [--skip-demo] [--skip-kl]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import deit  # noqa: F401
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch
from torch.utils.data import Dataset

from deit.bench.timing import machine_summary
from deit.train.distributed import init_distributed
from deit.train.engine import Trainer
from deit.train.recipe import TrainConfig
from deit.train.teacher_cache import format_size
from deit.train.teacher_cache_builder import build_teacher_cache

MODES = ("no teacher", "teacher online", "from the cache")


class TimedTrainer(Trainer):
    """Notes when each batch starts training: successive starts bound one whole step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_seconds: list[float] = []
        self._last_start: float | None = None

    def _train_batch(self, images: torch.Tensor, targets: torch.Tensor, sync: bool) -> torch.Tensor:
        now = time.perf_counter()
        if self._last_start is not None and self.position.batches_done > 0:
            self.step_seconds.append(now - self._last_start)
        self._last_start = now
        return super()._train_batch(images, targets, sync)


class InMemoryImages(Dataset):
    """Normalised random images with labels: the cost of a step without decoding or augmentation."""

    def __init__(self, count: int, size: int, classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, size, size, generator=g)
        self.targets = torch.randint(0, classes, (count,), generator=g).tolist()
        self.classes = [f"class{i}" for i in range(classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def compare(configs: dict[str, TrainConfig], teacher: torch.nn.Module, train_set: Any, val_set: Any, rounds: int) -> dict[str, Any]:
    """Build the cache, then time the three modes in turns; seconds per step and the build's numbers."""
    ctx = init_distributed("cpu")
    start = time.perf_counter()
    cache = build_teacher_cache(configs["build"], teacher=teacher, train_dataset=train_set, val_dataset=val_set)
    build_seconds = time.perf_counter() - start
    trainers = {
        "no teacher": TimedTrainer(configs["no teacher"], ctx, train_set=train_set, val_set=val_set),
        "teacher online": TimedTrainer(configs["teacher online"], ctx, teacher=teacher, train_set=train_set, val_set=val_set),
        "from the cache": TimedTrainer(configs["from the cache"], ctx, train_set=train_set, val_set=val_set),
    }
    for round_index in range(rounds):
        order = MODES[round_index % 3:] + MODES[: round_index % 3]
        for mode in order:
            trainer = trainers[mode]
            trainer.position.epoch, trainer.position.batches_done = round_index, 0
            trainer._last_start = None
            trainer.train_epoch()
    views = cache.layout.epochs * cache.layout.views_per_epoch
    return {"step_s": {mode: statistics.median(t.step_seconds) for mode, t in trainers.items()},
            "steps": len(trainers["no teacher"].step_seconds), "build_s_per_view": cache.seconds / views,
            "build_s": build_seconds, "bytes_per_view": cache.layout.bytes_per_view, "top_k": cache.layout.top_k,
            "classes": cache.layout.num_classes, "batch": configs["build"].batch_size}


def mode_configs(base: TrainConfig, cache_dir: Path, distilled: dict[str, Any]) -> dict[str, TrainConfig]:
    """The same run three ways (and the cache's build), each in its own output folder."""
    online = dataclasses.replace(base, teacher="<module>", distillation_type="hard", **distilled)
    return {
        "no teacher": dataclasses.replace(base, output=str(cache_dir.parent / "none")),
        "teacher online": dataclasses.replace(online, output=str(cache_dir.parent / "online")),
        "from the cache": dataclasses.replace(online, output=str(cache_dir.parent / "cached"), teacher_cache=str(cache_dir)),
        "build": dataclasses.replace(online, output=str(cache_dir)),
    }


def table(name: str, result: dict[str, Any], per_epoch_images: int, epochs: int) -> str:
    step = result["step_s"]
    rate = {mode: result["batch"] / seconds for mode, seconds in step.items()}
    lines = [
        f"**{name}** (median of {result['steps']} steps per mode; cache: top {result['top_k']} of {result['classes']} classes)",
        "",
        "| mode | s/step | student images/s | vs no teacher |",
        "|---|---:|---:|---:|",
        *(f"| {mode} | {step[mode]:.3f} | {rate[mode]:.1f} | {rate[mode] / rate['no teacher']:.2f}x |" for mode in MODES),
        "",
        f"cache build: {1000 * result['build_s_per_view']:.2f} ms of teacher per view ({result['build_s']:.1f} s for this run's cache, "
        f"set-up included); {result['bytes_per_view']} bytes per image-epoch; a {epochs}-epoch run on {per_epoch_images} images: "
        f"{format_size(result['bytes_per_view'] * per_epoch_images * epochs)}, {_hours(result['build_s_per_view'] * per_epoch_images * epochs)} "
        "of teacher passes to build on this machine (the online run spends the same in its steps)",
    ]
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def resnet_setup(work: Path, rounds: int, steps: int) -> str:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    teacher = resnet50(weights=None).eval()
    batch = 32
    train_set, val_set = InMemoryImages(batch * steps, 224, 1000, seed=1), InMemoryImages(8, 224, 1000, seed=2)
    base = TrainConfig(model="deit-tiny-distilled-patch16-224", epochs=rounds, batch_size=batch, num_workers=0, progress=False,
                       repeated_aug=False, model_ema=False, output=str(work / "none"))
    result = compare(mode_configs(base, work / "cache", {}), teacher, train_set, val_set, rounds)
    return table("DeiT-Ti student, ResNet-50 teacher, 224 px, batch 32", result, per_epoch_images=1_281_167, epochs=300)


def demo_setup(work: Path, rounds: int) -> str:
    from deit.demo.recipe import SEMI_EPOCHS, SEMI_LABELS_PER_CLASS, ClassBalancedSubset, load_data, student_config
    from deit.demo.teacher import SmallConvNet

    base = dataclasses.replace(student_config(str(work / "none"), "none"), epochs=rounds, model_ema=False, progress=False, overwrite=False)
    train_set, val_set = load_data(base)
    train_set, val_set = ClassBalancedSubset(train_set, 80), ClassBalancedSubset(val_set, 2)
    torch.manual_seed(0)
    teacher = SmallConvNet(num_classes=10).eval()
    result = compare(mode_configs(base, work / "cache", {"labels_per_class": SEMI_LABELS_PER_CLASS}), teacher, train_set, val_set, rounds)
    return table(f"deit demo's student and SmallConvNet teacher (mnist5k, 28 px, batch 16, {SEMI_LABELS_PER_CLASS} labels per class)",
                 result, per_epoch_images=4000, epochs=SEMI_EPOCHS)


def top_k_kl(work: Path, teacher_epochs: int, tau: float) -> str:
    """KL(teacher's softmax || target rebuilt from its top K), per image, on the training views of the demo's recipe."""
    from torch.utils.data import DataLoader

    from deit.demo.recipe import load_data, student_config, train_teacher
    from deit.train.teacher_cache import logits_from_top_k

    config = student_config("unused", "hard")
    train_set, val_set = load_data(config)
    run = train_teacher(train_set, val_set, num_classes=10, output=str(work / "teacher"), epochs=teacher_epochs)
    logits = torch.cat([run.model(images) for images, _ in DataLoader(train_set, batch_size=500)]).detach()
    full = torch.log_softmax(logits / tau, -1)
    rows = ["| K | KL(full ‖ top-K target), nats per image: mean | max | top-1 kept |", "|---:|---:|---:|---:|"]
    for k in (1, 5, 10):
        values, indices = logits.topk(k, dim=-1)
        target = torch.log_softmax(logits_from_top_k(values, indices, torch.logsumexp(logits / tau, -1), 10, tau) / tau, -1)
        kl = (full.exp() * (full - target)).sum(-1)
        kept = (target.argmax(-1) == logits.argmax(-1)).float().mean()
        rows.append(f"| {k}{' (all)' if k == 10 else ''} | {kl.mean():.2e} | {kl.max():.2e} | {100 * kept:.0f} % |")
    return (f"**top-K soft target vs the full softmax** (tau {tau:g}; the demo's SmallConvNet teacher after {teacher_epochs} epoch(s), "
            f"{run.acc1:.1f} % top-1, on the {len(train_set)} mnist5k training images with the recipe's crops)\n\n" + "\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns per mode (epochs of each trainer)")
    parser.add_argument("--steps", type=int, default=3, help="steps per turn in the ResNet-50 set-up")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="epochs of the demo teacher for the KL table")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-kl", action="store_true")
    args = parser.parse_args()
    print(machine_summary(), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if not args.skip_resnet:
            print(resnet_setup(work / "resnet", args.rounds, args.steps) + "\n", flush=True)
        if not args.skip_demo:
            print(demo_setup(work / "demo", args.rounds) + "\n", flush=True)
        if not args.skip_kl:
            print(top_k_kl(work / "kl", args.teacher_epochs, args.tau), flush=True)
    print(machine_summary(), flush=True)


if __name__ == "__main__":
    main()
