"""Small, fast training set-ups shared by the engine, resume and DDP tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from deit.probes import fast_kernels_available
from deit.train.recipe import TrainConfig

IMAGE_SIZE = 16
CLASSES = ["red", "green", "blue"]


class ColourImages(Dataset):
    """Three classes of 16x16 noise images, told apart by which colour channel is brighter.

    ``augment`` adds random noise and flips that draw from all three random generators
    (torch, NumPy, Python), so the tests see whether every one of them is reproduced.
    """

    classes = CLASSES

    def __init__(self, size: int, seed: int, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(CLASSES), (size,), generator=g)
        self.images = torch.rand(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 0.5
        for image, label in zip(self.images, self.labels):
            image[int(label)] += 0.5
        self.augment = augment

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].clone()
        if self.augment:
            image += 0.1 * torch.randn_like(image)
            image += torch.from_numpy(np.random.uniform(-0.05, 0.05, size=(1, 1, IMAGE_SIZE)).astype(np.float32))
            if random.random() < 0.5:
                image = image.flip(1)
        return image, int(self.labels[index])


needs_fast_kernels = pytest.mark.skipif(not fast_kernels_available(), reason="this PyTorch build has no oneDNN matmul kernel (torch.ops.mkldnn._linear_pointwise)")
# TrainConfig.fast_kernels for the tests that train with the student's Linear layers on oneDNN and without.
FAST_KERNELS = [pytest.param("on", marks=needs_fast_kernels), "off"]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second thread gains nothing, and on a busy machine OpenMP threads
    waiting for each other make a run many times slower. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(output: str, **overrides) -> TrainConfig:
    """A two-block DeiT on 16x16 inputs: a step takes milliseconds."""
    settings = dict(
        model="deit-tiny-distilled-patch16-224", image_size=IMAGE_SIZE, patch_size=4, hidden_size=32, depth=2, heads=2,
        epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, lr_per_step=True, num_workers=0, progress=False,
        model_ema=False, repeated_aug=False, mixup=0.0, cutmix=0.0, drop_path=0.0, output=output, seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def datasets(train_size: int = 64, val_size: int = 24) -> tuple[ColourImages, ColourImages]:
    return ColourImages(train_size, seed=1), ColourImages(val_size, seed=2, augment=False)


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class ColourTeacher(torch.nn.Module):
    """A teacher without weights that knows the colours: its logits are the channel means, scaled."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return 10.0 * pixel_values.mean(dim=(2, 3))


# The partly labelled objective (deit.train.partial_labels): 2 labelled images per class, the rest
# of the training images without their labels, learned from ColourTeacher.
LABELS_PER_CLASS = 2


def tiny_partly_labelled_config(output: str, **overrides) -> TrainConfig:
    return tiny_config(output, **{"labels_per_class": LABELS_PER_CLASS, "teacher": "<module>", "distillation_type": "hard", **overrides})


def fit_with_colour_teacher(config: TrainConfig, **datasets):
    from deit.train.engine import fit

    return fit(config, teacher=ColourTeacher(), **datasets)


# What torchrun does for one machine, without importing torch in the launcher (3-4 s of each
# run's start here): the environment of each rank (what the engine and env:// read), and when a
# rank fails the other is stopped rather than left waiting in a collective. The README test runs
# the real torchrun.
_LAUNCH_TWO_RANKS = """
import os, socket, subprocess, sys, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ranks = [subprocess.Popen([sys.executable, *sys.argv[1:]], env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                          "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
while any(p.poll() is None for p in ranks):
    if any(p.poll() not in (None, 0) for p in ranks):
        for p in ranks:
            p.kill()
    time.sleep(0.05)
sys.exit(max(p.returncode != 0 for p in ranks))
"""


def start_two_gloo_processes(script: Path, *args: object) -> subprocess.Popen:
    """``script`` in two ranks of one thread each, launched as torchrun launches them, in a session
    of its own (so that a hung run can be stopped with all its ranks): wait with :func:`finish`."""
    command = [sys.executable, "-c", _LAUNCH_TWO_RANKS, str(script), *map(str, args)]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait for ``process`` (killing its session when it hangs); a failure shows the end of its stderr."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, err[-3000:]
