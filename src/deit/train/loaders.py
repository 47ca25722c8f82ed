"""The data side of a run: data sets with the recipe's transforms, samplers, and DataLoaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from .distributed import DistributedContext
from .epoch_order import EpochOrder, SeededSamples
from .masking import MaskedTrainingSamples, MaskedValidationImages, MaskGenerator
from .recipe import TrainConfig


@dataclass
class RunData:
    train_set: Dataset
    val_set: Dataset
    train_loader: DataLoader
    val_loader: DataLoader
    order: EpochOrder
    id2label: dict[int, str]  # empty for masked-image modeling, which reads no labels

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank (the loader's length shrinks while skipping)."""
        return len(self.order.sampler) // self.train_loader.batch_sampler.batch_size


def build_datasets(train: TrainConfig, image_size: int, *, labelled: bool = True) -> tuple[Dataset, Dataset]:
    """The training data with the recipe's augmentation, the validation data with the eval transform.

    ``labelled=False`` (pre-training) reads folders and ``hf:`` data sets without labels and does
    not compare the class lists of the two splits.
    """
    from .data import build_dataset, class_names
    from .transforms import build_eval_transform

    eval_transform = build_eval_transform(image_size, mean=train.mean, std=train.std, crop_pct=train.crop_pct)
    train_set = build_dataset(train.data, "train", recipe_train_transform(train, image_size), image_size=image_size, labelled=labelled)
    val_set = build_dataset(train.val_data or train.data, "val", eval_transform, image_size=image_size, labelled=labelled)
    if labelled and class_names(train_set) != class_names(val_set):
        raise ValueError(
            f"the training data has classes {class_names(train_set)[:5]}... but the validation data has "
            f"{class_names(val_set)[:5]}...: both must list the same classes in the same order"
        )
    return train_set, val_set


def recipe_train_transform(train: TrainConfig, image_size: int) -> Any:
    """The training augmentation of ``train`` (the same for labelled and unlabelled images)."""
    from .transforms import build_train_transform

    rand_augment = None if train.aa in (None, "", "none") else train.aa
    return build_train_transform(
        image_size, mean=train.mean, std=train.std, scale=train.scale, hflip=train.hflip, rand_augment=rand_augment,
        interpolation=train.interpolation, re_prob=train.reprob, re_mode=train.remode, color_jitter=train.color_jitter,
    )


def build_train_sampler(train: TrainConfig, dataset_len: int, ctx: DistributedContext) -> Any:
    """This rank's share of an epoch: repeated augmentation (the recipe) or plain shuffling."""
    if train.repeated_aug:
        from .samplers import RASampler

        return RASampler(dataset_len, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, num_repeats=train.num_repeats, seed=train.seed)
    # DistributedSampler only needs the length; it works without a process group when told the ranks.
    return DistributedSampler(range(dataset_len), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=train.seed)


def build_run_data(train: TrainConfig, ctx: DistributedContext, image_size: int, train_set: Dataset | None = None,
                   val_set: Dataset | None = None, *, masks: MaskGenerator | None = None) -> RunData:
    """Loaders of ``(image, label)`` batches; with ``masks`` (masked-image modeling), of ``(image, mask)``."""
    if train_set is None or val_set is None:
        train_set, val_set = build_datasets(train, image_size, labelled=masks is None)
    if masks is None and (train.labels_per_class is not None or train.unlabeled):
        from .partial_labels import partly_labelled

        train_set = partly_labelled(
            train_set, labels_per_class=train.labels_per_class, unlabeled=train.unlabeled,
            use_rest=train.resolved_distillation_type != "none", transform=recipe_train_transform(train, image_size),
            source=getattr(train_set, "source", type(train_set).__name__),
        )
    from .data import ImageDataset, class_names, collate_readable

    names = class_names(train_set) if masks is None else []

    for dataset in (train_set, val_set, *getattr(train_set, "sources", ())):  # sources: of partly labelled data
        if isinstance(dataset, ImageDataset):
            dataset.quiet = True  # the engine names corrupt files between progress bars, not inside one
    if masks is None and isinstance(val_set, ImageDataset):
        val_set.replace_corrupt = False  # a corrupt validation image is left out, not scored as another one
    order = EpochOrder(build_train_sampler(train, len(train_set), ctx), seed=train.seed, rank=ctx.rank, world_size=ctx.world_size)
    per_step = train.batch_size * train.accum_steps
    if len(order) < per_step:
        raise ValueError(
            f"{len(order)} training samples per process per epoch do not fill one step of {train.batch_size} x {train.accum_steps} "
            f"(batch size x accumulation steps){' x ' + str(ctx.world_size) + ' processes' if ctx.enabled else ''}: "
            "lower --batch-size or add data"
        )
    loader_options: dict[str, Any] = dict(
        num_workers=train.resolved_num_workers, pin_memory=ctx.device.type == "cuda", persistent_workers=train.resolved_num_workers > 0,
    )
    train_samples = SeededSamples(train_set) if masks is None else MaskedTrainingSamples(train_set, masks)
    train_loader = DataLoader(
        train_samples, batch_sampler=BatchSampler(order, train.batch_size, drop_last=True),
        # Its own generator: making an iterator must not draw from the global random state,
        # or a resumed run would see other random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(train.seed), **loader_options,
    )
    # Every validation image exactly once over all ranks (no padding that would count some twice).
    from .samplers import ShardedEvalSampler

    val_sampler = ShardedEvalSampler(len(val_set), num_replicas=ctx.world_size, rank=ctx.rank)
    val_samples = val_set if masks is None else MaskedValidationImages(val_set, masks, train.seed)
    val_loader = DataLoader(val_samples, batch_size=train.batch_size, sampler=val_sampler, collate_fn=collate_readable, **loader_options)
    return RunData(train_set, val_set, train_loader, val_loader, order, dict(enumerate(names)))
