"""The teacher-logit cache: the teacher's top-K logits of every augmented view of every epoch,
written once (``deit teacher-cache``, :mod:`deit.train.teacher_cache_builder`) and read back in
place of the teacher (``deit train --teacher-cache DIR``), so the teacher never runs again and
one cache serves any number of students (the idea of TinyViT, Wu et al. 2022).

Why the replay is exact: the engine draws every sample's augmentation from (seed, epoch,
position) and the main process's random state of each batch (mixup/cutmix) from (seed, rank,
step) (:mod:`deit.train.epoch_order`), so the views of a run are known before it runs. The
builder walks the run's own loader, seeds and mixes each batch with the trainer's own methods
and stores what the teacher says of it; a student run reads the logits of the batch it is at
(epoch, batch, rank). Everything that shapes the views or the teacher is in the manifest's
fingerprint, and a run whose views would differ is refused, naming the setting.

The store, in the cache folder (raw little-endian arrays, memory-mapped; shapes in the manifest):

- ``values.f32`` ``[epochs, batches, ranks, batch, K]``: the K largest logits of each view, largest first
- ``indices.i16`` (``.i32`` past 32,767 classes), same shape: their classes
- ``logsumexp.f32`` ``[epochs, batches, ranks, batch]``: ``logsumexp(logits / tau)`` over all classes
  (what the top K leave of the softmax, for soft distillation from K < all classes)
- ``checks.i64`` ``[epochs, batches, ranks]``: -1 while a batch is not written, then the CRC-32 of its rows

Row ``(e, b, r, j)`` is the view at global position ``(b * batch + j) * ranks + r`` of epoch ``e``:
rank ``r``'s ``j``-th image of its ``b``-th batch. A batch's rows are contiguous, so a step reads
one block. Values are float32, so the logits of a float32 (or bf16/fp16) teacher come back bit
for bit.

Soft targets from K < all classes (:func:`logits_from_top_k`): the top K classes keep their
softmax probabilities (exact, from the stored log-sum-exp), the mass left over is spread evenly
over the other classes, as TinyViT does. The logits returned are ``tau * log`` of that target,
so the distillation loss takes them as it takes a teacher's.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DeitError
from ..atomic import atomic_path

MANIFEST_NAME = "manifest.json"
CACHE_FORMAT = 1
# K by default: every class while a row of them costs at most 600 bytes per view (exact soft
# distillation, bit-identical to the online teacher); past that TinyViT's K for ImageNet-1k.
ALL_CLASSES_UP_TO = 100
DEFAULT_TOP_K = 10
NOT_WRITTEN = -1
# Every file a cache folder may hold besides the manifest (the index file's name says its width).
STORE_FILE_NAMES = ("values.f32", "indices.i16", "indices.i32", "logsumexp.f32", "checks.i64")

# The settings that decide which images a run sees and how they are augmented and mixed, and the
# settings of the teacher that scores them: a cache serves a run only when all of them match.
VIEW_SETTINGS = (
    "data", "unlabeled", "labels_per_class", "mean", "std", "scale", "hflip", "aa", "color_jitter", "interpolation",
    "reprob", "remode", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "seed", "batch_size", "accum_steps",
    "repeated_aug", "num_repeats",
)
TEACHER_SETTINGS = (
    "teacher", "teacher_weights", "teacher_input_size", "teacher_mean", "teacher_std", "teacher_finetune_epochs",
    "teacher_finetune_lr", "amp",
)
# Fingerprint fields that are not TrainConfig fields, as an error message names them.
DERIVED_FIELDS = {
    "image_size": "the student's image size (--image-size or the model's)",
    "world_size": "the number of processes (mixup/cutmix mixes within each process's batch, so another count sees other views)",
    "classes": "the classes of the data",
    "training_images": "the training images (a digest of their names and labels)",
}


class TeacherCacheError(DeitError, ValueError):
    """A teacher cache that cannot serve a run: missing, made for other views, incomplete, truncated or corrupt."""


def resolve_top_k(top_k: int | None, num_classes: int) -> int:
    """``--top-k``, or by default every class up to :data:`ALL_CLASSES_UP_TO`, else :data:`DEFAULT_TOP_K`."""
    if top_k is None:
        return num_classes if num_classes <= ALL_CLASSES_UP_TO else DEFAULT_TOP_K
    if not 1 <= top_k <= num_classes:
        raise ValueError(f"--top-k must be between 1 and the {num_classes} classes of the data, got {top_k}")
    return top_k


@dataclass(frozen=True)
class StoreLayout:
    epochs: int
    batches: int  # per epoch and rank (whole accumulation steps only, as the engine trains them)
    ranks: int
    batch_size: int
    top_k: int
    num_classes: int

    @property
    def index_dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32)

    def files(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{file name: (shape, dtype)} of the store."""
        rows = (self.epochs, self.batches, self.ranks, self.batch_size)
        index = self.index_dtype
        return {
            "values.f32": ((*rows, self.top_k), np.dtype(np.float32)),
            f"indices.i{8 * index.itemsize}": ((*rows, self.top_k), index),
            "logsumexp.f32": (rows, np.dtype(np.float32)),
            "checks.i64": (rows[:3], np.dtype(np.int64)),
        }

    def file_bytes(self) -> dict[str, int]:
        return {name: math.prod(shape) * dtype.itemsize for name, (shape, dtype) in self.files().items()}

    @property
    def views_per_epoch(self) -> int:
        return self.batches * self.ranks * self.batch_size

    @property
    def bytes_per_view(self) -> int:
        return self.top_k * (4 + self.index_dtype.itemsize) + 4

    @property
    def total_bytes(self) -> int:
        return sum(self.file_bytes().values())


def listing_digest(dataset: Any) -> str:
    """A digest of a training set's listing: its length, labels and (where it can name them) items."""
    digest = hashlib.sha256(f"{len(dataset)}".encode())
    digest.update(json.dumps([int(t) for t in getattr(dataset, "targets", ())]).encode())
    for part in (dataset, *getattr(dataset, "sources", ())):
        describe = getattr(part, "describe", None)
        if callable(describe):
            for index in range(len(part)):
                digest.update(describe(index).encode() + b"\0")
    return digest.hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A setting as JSON gives it back (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


def view_fingerprint(config: Any, *, image_size: int, world_size: int, train_set: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Everything that determines the views of a run and the teacher's logits of them."""
    settings = {name: _plain(getattr(config, name)) for name in (*VIEW_SETTINGS, *TEACHER_SETTINGS)}
    if settings["aa"] in ("", "none"):
        settings["aa"] = None
    settings.update(image_size=image_size, world_size=world_size, classes=list(class_names), training_images=listing_digest(train_set))
    return settings


def _setting_name(name: str) -> str:
    return DERIVED_FIELDS.get(name, f"--{name.replace('_', '-')}")


def fingerprint_difference(cached: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting whose value differs, as "NAME: VALUE in the cache, VALUE in this run"; None when all match."""
    for name, value in current.items():
        if cached.get(name) != value:
            return f"{_setting_name(name)}: {cached.get(name)!r} in the cache, {value!r} in this run"
    return None


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes and bytes): which teacher scored the views."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise TeacherCacheError(f"{folder}: no teacher cache there (no {MANIFEST_NAME}); build one with deit teacher-cache "
                                "and the run's options, --output pointing at the cache")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise TeacherCacheError(f"{path}: not a readable teacher-cache manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise TeacherCacheError(f"{path}: not a deit teacher-cache manifest of format {CACHE_FORMAT}")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(folder / MANIFEST_NAME) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n")


def layout_of(manifest: dict[str, Any]) -> StoreLayout:
    return StoreLayout(**manifest["layout"])


def new_manifest(fingerprint: dict[str, Any], layout: StoreLayout, teacher: dict[str, Any]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "fingerprint": fingerprint, "layout": asdict(layout), "teacher": teacher,
            "bytes": layout.total_bytes, "bytes_per_view": layout.bytes_per_view, "complete": False}


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start a store the disk cannot hold (the files are sparse: they fill as batches are written)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TeacherCacheError(f"{folder}: the teacher cache needs {format_size(needed)} more but the disk has {format_size(free)} free; "
                                "free some space, choose another --output, or lower --top-k")


def format_size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class LogitStore:
    """The memory-mapped arrays of a cache folder (see the module docstring for the layout)."""

    def __init__(self, folder: Path, layout: StoreLayout, mode: str) -> None:
        self.folder = folder
        self.layout = layout
        self.arrays = {name: np.memmap(folder / name, dtype=dtype, mode=mode, shape=shape) for name, (shape, dtype) in layout.files().items()}
        self.values, self.indices, self.logsumexp, self.checks = self.arrays.values()

    @classmethod
    def create(cls, folder: Path, layout: StoreLayout) -> "LogitStore":
        """Empty files of the store's size (sparse where the file system allows), every batch unwritten."""
        store = cls(folder, layout, "w+")
        store.checks[:] = NOT_WRITTEN
        store.flush()
        return store

    @classmethod
    def open(cls, folder: Path, layout: StoreLayout, mode: str = "r") -> "LogitStore":
        for name, size in layout.file_bytes().items():
            path = folder / name
            if not path.is_file():
                raise TeacherCacheError(f"{path}: missing from the teacher cache; build it again with deit teacher-cache --overwrite")
            if path.stat().st_size != size:
                raise TeacherCacheError(f"{path}: truncated or corrupt teacher cache ({path.stat().st_size} bytes, the manifest "
                                        f"says {size}); build it again with deit teacher-cache --overwrite")
        return cls(folder, layout, mode)

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()

    def _checksum(self, epoch: int, batch: int, rank: int) -> int:
        crc = 0
        for array in (self.values, self.indices, self.logsumexp):
            crc = zlib.crc32(np.ascontiguousarray(array[epoch, batch, rank]).tobytes(), crc)
        return crc

    def write(self, epoch: int, batch: int, rank: int, logits: torch.Tensor, tau: float) -> None:
        """Store the top K of a batch's logits; the batch counts as written once its checksum is in."""
        logits = logits.detach().float().cpu()
        values, indices = logits.topk(self.layout.top_k, dim=-1)
        self.values[epoch, batch, rank] = values.numpy()
        self.indices[epoch, batch, rank] = indices.numpy().astype(self.layout.index_dtype)
        self.logsumexp[epoch, batch, rank] = torch.logsumexp(logits / tau, dim=-1).numpy()
        self.checks[epoch, batch, rank] = self._checksum(epoch, batch, rank)

    def read(self, epoch: int, batch: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, indices, logsumexp) of one batch; a batch not written or not matching its checksum is an error."""
        check = int(self.checks[epoch, batch, rank])
        where = f"epoch {epoch + 1}, batch {batch + 1}, rank {rank}"
        if check == NOT_WRITTEN:
            raise TeacherCacheError(f"{self.folder}: the teacher cache has no logits for {where}; finish it with deit teacher-cache")
        if check != self._checksum(epoch, batch, rank):
            raise TeacherCacheError(f"{self.folder}: corrupt teacher cache: the logits of {where} do not match their checksum; "
                                    "build it again with deit teacher-cache --overwrite")
        indices = torch.from_numpy(self.indices[epoch, batch, rank].astype(np.int64))
        if int(indices.min()) < 0 or int(indices.max()) >= self.layout.num_classes:
            raise TeacherCacheError(f"{self.folder}: corrupt teacher cache: class indices out of range at {where}")
        return torch.from_numpy(np.array(self.values[epoch, batch, rank])), indices, torch.from_numpy(np.array(self.logsumexp[epoch, batch, rank]))

    def batches_written(self, epoch: int, rank: int) -> int:
        """How many batches of ``epoch`` on ``rank`` are written (they are written in order)."""
        pending = np.flatnonzero(self.checks[epoch, :, rank] == NOT_WRITTEN)
        return int(pending[0]) if len(pending) else self.layout.batches

    def count_written(self, epochs: int | None = None) -> int:
        return int((self.checks[: epochs if epochs is not None else self.layout.epochs] != NOT_WRITTEN).sum())


def logits_from_top_k(values: torch.Tensor, indices: torch.Tensor, logsumexp: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """Teacher logits for the loss from a batch's top K: the logits themselves when K is every class;
    else ``tau * log q`` where ``q`` keeps the teacher's softmax (at ``tau``) on the top K and spreads
    the rest of the mass evenly over the other classes (so ``softmax(result / tau) == q`` and the
    top-1 class is the teacher's)."""
    rows, top_k = values.shape
    if top_k == num_classes:
        return torch.empty(rows, num_classes, dtype=values.dtype).scatter_(1, indices, values)
    scaled = values - tau * logsumexp[:, None]  # tau * log p of the top K
    rest = (1.0 - (scaled / tau).exp().sum(-1)).clamp_min(torch.finfo(torch.float32).tiny) / (num_classes - top_k)
    logits = (tau * rest.log())[:, None].repeat(1, num_classes)
    return logits.scatter_(1, indices, scaled)


class CachedTeacher(nn.Module):
    """Stands in for the teacher of a run: the stored logits of the batch the run is at."""

    def __init__(self, store: LogitStore, *, rank: int, tau: float, dtype: torch.dtype, position: Callable[[], tuple[int, int]],
                 description: str) -> None:
        super().__init__()
        self.store = store
        self.rank = rank
        self.tau = tau
        self.dtype = dtype
        self.position = position
        self.input_description = description

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        epoch, batch = self.position()
        values, indices, logsumexp = self.store.read(epoch, batch, self.rank)
        if values.shape[0] != pixel_values.shape[0]:
            raise TeacherCacheError(f"{self.store.folder}: the cache holds {values.shape[0]} views per batch but the run's batch "
                                    f"has {pixel_values.shape[0]}")
        logits = logits_from_top_k(values, indices, logsumexp, self.store.layout.num_classes, self.tau)
        return logits.to(device=pixel_values.device, dtype=self.dtype)


def open_cached_teacher(config: Any, *, image_size: int, world_size: int, rank: int, train_set: Any, class_names: Sequence[str],
                        batches_per_epoch: int, position: Callable[[], tuple[int, int]]) -> CachedTeacher:
    """The cache ``config.teacher_cache`` as the teacher of this run, after checking that it was
    made for this run's views (every fingerprint field), covers its epochs, and is whole."""
    folder = Path(config.teacher_cache)
    manifest = read_manifest(folder)
    current = view_fingerprint(config, image_size=image_size, world_size=world_size, train_set=train_set, class_names=class_names)
    difference = fingerprint_difference(manifest["fingerprint"], current)
    if difference is not None:
        raise TeacherCacheError(f"the teacher cache {folder} was made for other views than this run's: {difference}. Every setting "
                                "that shapes the views or the teacher must match; build a cache for this run with deit teacher-cache "
                                "and its options")
    layout = layout_of(manifest)
    if config.epochs > layout.epochs:
        raise TeacherCacheError(f"the teacher cache {folder} holds {layout.epochs} epoch(s) of views but this run trains "
                                f"{config.epochs} (--epochs); build one with --epochs {config.epochs} or more")
    if layout.batches != batches_per_epoch:  # follows from the fingerprint; checked, not assumed
        raise TeacherCacheError(f"the teacher cache {folder} holds {layout.batches} batches per epoch, this run trains {batches_per_epoch}")
    tau = float(manifest["teacher"]["tau"])
    partial = layout.top_k < layout.num_classes
    if partial and config.resolved_distillation_type == "soft" and config.distillation_tau != tau:
        raise TeacherCacheError(f"the teacher cache {folder} keeps {layout.top_k} of {layout.num_classes} classes and the rest of "
                                f"the softmax at --distillation-tau {tau:g}, this run has {config.distillation_tau:g}; use {tau:g}, "
                                f"or a cache of every class (--top-k {layout.num_classes}), which serves any temperature")
    store = LogitStore.open(folder, layout)
    written = store.count_written(config.epochs)
    needed = config.epochs * layout.batches * layout.ranks
    if written < needed:
        raise TeacherCacheError(f"the teacher cache {folder} is incomplete: {written} of the {needed} batches this run needs are "
                                "written; finish it by running deit teacher-cache again with the same options")
    kept = "every class (exact logits)" if not partial else f"the top {layout.top_k} of {layout.num_classes} classes"
    description = (f"teacher {config.teacher}: read from the teacher cache {folder} ({kept}, {layout.epochs} epoch(s) of views); "
                   "the teacher is not loaded")
    return CachedTeacher(store, rank=rank, tau=tau, dtype=getattr(torch, manifest["teacher"]["logits_dtype"]), position=position,
                         description=description)
