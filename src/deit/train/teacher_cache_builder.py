"""``deit teacher-cache``: run the teacher once over every view of a training run and store its top-K logits.

The builder is a :class:`~deit.train.engine.Trainer` of the same settings, so the data, the
sampler, the augmentation, the per-batch random state and the mixing are the run's own
(``Trainer._seed_batch``, ``Trainer._student_batch``); only the student's step is replaced by
the teacher's forward pass and a write to the store (:mod:`deit.train.teacher_cache`).

Interrupted and run again with the same options, it continues at the first batch it had not
written (each batch is marked written, with its checksum, after its rows): the result is byte
for byte the store of an uninterrupted build, since every batch's views are a function of
(seed, epoch, position).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import DistributedContext, barrier
from .engine import Trainer, run_trainer
from .recipe import TrainConfig
from .teacher_cache import (
    MANIFEST_NAME, STORE_FILE_NAMES, LogitStore, StoreLayout, TeacherCacheError, check_free_space, fingerprint_difference,
    format_size, new_manifest, read_manifest, resolve_top_k, view_fingerprint, weights_digest, write_manifest,
)


@dataclass
class CacheResult:
    folder: Path
    layout: StoreLayout
    seconds: float  # of this call's teacher passes
    complete: bool
    is_main: bool = True


class TeacherCacheBuilder(Trainer):
    """The teacher's pass over every view of the run ``config`` describes, into ``config.output``."""

    run_files = (MANIFEST_NAME, *STORE_FILE_NAMES)

    def __init__(self, config: TrainConfig, ctx: DistributedContext, *, top_k: int | None = None, **kwargs: Any) -> None:
        if config.teacher_cache:
            raise ValueError(f"--teacher-cache {config.teacher_cache} names a cache to train from; deit teacher-cache writes one to --output")
        if config.resolved_distillation_type == "none":
            raise ValueError("a teacher cache needs a teacher (--teacher) and hard or soft distillation")
        self.top_k = top_k
        super().__init__(config, ctx, **kwargs)

    def _claim_output_dir(self) -> None:
        """Nothing yet: whether a cache in the folder is continued or refused needs the views' fingerprint (run)."""

    def _keeps_ema(self) -> bool:
        return False

    def _layout(self) -> StoreLayout:
        return StoreLayout(
            epochs=self.config.epochs, batches=self.steps_per_epoch * self.config.accum_steps, ranks=self.ctx.world_size,
            batch_size=self.config.batch_size, top_k=resolve_top_k(self.top_k, len(self.data.id2label)), num_classes=len(self.data.id2label),
        )

    def _open_store(self, layout: StoreLayout, fingerprint: dict[str, Any], teacher_identity: dict[str, Any]) -> tuple[LogitStore, dict[str, Any]]:
        """Continue the cache in the output folder when it was made for these views, else start one
        (an existing cache of other views is refused unless --overwrite)."""
        folder, config = self.output_dir, self.config
        manifest = new_manifest(fingerprint, layout, teacher_identity)
        continuing = (folder / MANIFEST_NAME).is_file() and not config.overwrite
        barrier()  # every rank has looked before rank 0 writes: all take the same branch
        if continuing:
            found = read_manifest(folder)
            difference = fingerprint_difference(found["fingerprint"], fingerprint) or fingerprint_difference(
                {"store layout": found["layout"], "teacher": found["teacher"]}, {"store layout": manifest["layout"], "teacher": teacher_identity})
            if difference is not None:
                raise TeacherCacheError(f"{folder} holds a teacher cache of other views or another teacher ({difference}); "
                                        "--overwrite replaces it, or choose another --output")
            store = LogitStore.open(folder, layout, "r+")
            written = store.count_written()
            self._log(f"teacher cache: continuing {folder}: {written} of {layout.epochs * layout.batches * layout.ranks} batches written")
            check_free_space(folder, layout.total_bytes * (1 - written / (layout.epochs * layout.batches * layout.ranks)))
            return store, found
        folder.mkdir(parents=True, exist_ok=True)
        check_free_space(folder, layout.total_bytes)  # on every rank (one disk, one answer), so that all stop alike
        if self.ctx.is_main:
            for name in self.run_files:
                (folder / name).unlink(missing_ok=True)
            LogitStore.create(folder, layout)
            write_manifest(folder, manifest)
        barrier()
        return LogitStore.open(folder, layout, "r+"), manifest

    def run(self) -> CacheResult:  # type: ignore[override]
        from tqdm.auto import tqdm

        config, ctx, position = self.config, self.ctx, self.position
        layout = self._layout()
        fingerprint = view_fingerprint(config, image_size=self.image_size, world_size=ctx.world_size, train_set=self.data.train_set,
                                       class_names=list(self.data.id2label.values()))
        with torch.no_grad(), self._autocast():  # the dtype the loss gets the online teacher's logits in
            logits_dtype = self.teacher(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)).dtype
        teacher_identity = {"spec": config.teacher, "weights_sha256": weights_digest(self.teacher), "tau": config.distillation_tau,
                            "logits_dtype": str(logits_dtype).removeprefix("torch.")}
        self._log(f"teacher cache: {layout.epochs} epoch(s) x {layout.views_per_epoch} views x top {layout.top_k} of "
                  f"{layout.num_classes} classes = {format_size(layout.total_bytes)} ({layout.bytes_per_view} bytes per view) in {self.output_dir}")
        store, manifest = self._open_store(layout, fingerprint, teacher_identity)
        bar = tqdm(total=layout.epochs * layout.batches, initial=sum(store.batches_written(e, ctx.rank) for e in range(layout.epochs)),
                   desc="teacher cache", unit="batch", disable=not (config.progress and ctx.is_main), dynamic_ncols=True, file=sys.stderr)
        start, stopped = time.perf_counter(), False
        for epoch in range(layout.epochs):
            position.epoch, position.batches_done = epoch, store.batches_written(epoch, ctx.rank)
            if position.batches_done == layout.batches:
                continue
            self.data.order.set_epoch(epoch, skip=position.batches_done * config.batch_size)
            for images, targets in self.data.train_loader:
                if position.batches_done >= layout.batches:
                    break  # micro-batches that do not fill a last accumulation step are not trained on
                self._seed_batch(layout.batches)
                images, _ = self._student_batch(images.to(self.device), targets.to(self.device))
                with torch.no_grad(), self._autocast():
                    logits = self.teacher(images)
                store.write(epoch, position.batches_done, ctx.rank, logits, config.distillation_tau)
                position.batches_done += 1
                bar.update(1)
                steps = (epoch * layout.batches + position.batches_done) // config.accum_steps
                if config.stop_after_steps is not None and steps >= config.stop_after_steps:
                    stopped = True
                    break
            store.flush()
            if stopped:
                break
        bar.close()
        seconds = time.perf_counter() - start
        barrier()
        complete = store.count_written() == layout.epochs * layout.batches * layout.ranks
        if ctx.is_main and complete:
            write_manifest(self.output_dir, {**manifest, "complete": True})
        return CacheResult(self.output_dir, layout, seconds, complete, ctx.is_main)


def build_teacher_cache(config: TrainConfig, *, top_k: int | None = None, teacher: nn.Module | None = None, train_dataset: Any = None,
                        val_dataset: Any = None) -> CacheResult:
    """Write the teacher cache of the run ``config`` describes into ``config.output`` (see the module docstring).

    ``teacher``/``train_dataset``/``val_dataset`` as for :func:`deit.train.engine.fit`.
    """
    if teacher is not None and config.teacher is None:
        config = dataclasses.replace(config, teacher="<module>")
    builder = functools.partial(TeacherCacheBuilder, top_k=top_k)
    return run_trainer(builder, config, teacher=teacher, train_dataset=train_dataset, val_dataset=val_dataset)  # type: ignore[arg-type, return-value]
