"""Fast batched image loading from files, for ``deit predict`` / ``deit eval`` over folders.

Decoding, resizing and cropping happen in DataLoader worker processes (or threads), on 8-bit
pixels: a worker sends back a (3, H, W) uint8 crop, a quarter of the bytes of float32. Rescale
and normalize are the last step, on the whole batch and on the model's device
(:func:`to_model_input`), through the processor's 256-entry lookup table.

Two resize kernels, both on 8-bit pixels:

* ``resize="pil"`` (default): Pillow's, so the output equals
  :class:`~deit.processing.DeiTImageProcessor`'s (and transformers' PIL-backend processor's)
  bit for bit;
* ``resize="torch"``: torchvision's antialiased bicubic on uint8 tensors, the kernel of
  transformers' default (torchvision-backend) DeiT processor -- several times faster than
  Pillow's; it differs from Pillow's by at most a few 8-bit levels on a few pixels.

Files are opened by :mod:`deit.images` (EXIF orientation, the mode policy), as everywhere; with
``resize="torch"`` they are decoded straight into arrays (:func:`deit.images.open_image_array`:
``simplejpeg`` for plain JPEG files when it is installed, the same pixels as Pillow's).

``draft=True`` asks the JPEG decoder for a reduced-size image (DCT scaling by 1/2, 1/4 or 1/8,
never below the resize target) before the bicubic resize: decoding large photos gets several
times faster, and the output moves by a few 8-bit levels (measured in BENCHMARKS.md).

A file that cannot be read does not stop the others: its error comes back with its index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import IMAGE_SUFFIXES, ImageReadError, decode_image, open_image_array, read_image
from .processing import DeiTImageProcessor

__all__ = ["LoadedBatch", "ImageFiles", "load_batches", "to_model_input", "default_num_workers", "RESIZE_KERNELS",
           "expand_inputs", "output_names"]

RESIZE_KERNELS = ("pil", "torch")
# PIL resampling filter -> the torchvision interpolation mode that resizes tensors the same way.
_TORCHVISION_MODES = {Image.Resampling.NEAREST: "nearest", Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic",
                      Image.Resampling.LANCZOS: "lanczos"}


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (recursively, sorted).
    A file reached twice (given itself and inside a given folder) is kept once, at its first place."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()) if path.is_dir() else [path]
        for file in found:
            key = Path(os.path.normcase(os.path.abspath(file)))
            if key not in seen:
                seen.add(key)
                paths.append(file)
    return paths


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The name each input's outputs take (``NAME.attention.png``, the ``name`` of a JSON result):
    its path relative to the deepest folder holding all the inputs, with ``/`` between folders.

    Inputs from one folder keep their file names; ``a/cat.jpg`` and ``b/cat.jpg`` become
    ``a/cat.jpg`` and ``b/cat.jpg``, so no two inputs' outputs can overwrite each other.
    """
    if not paths:
        return []
    absolute = [Path(os.path.abspath(p)) for p in paths]
    try:
        common = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError as err:  # Windows: files on different drives share no folder
        raise ValueError(f"inputs on different drives have no common folder to name their outputs by: {err}") from None
    return [p.relative_to(common).as_posix() for p in absolute]


@dataclass
class LoadedBatch:
    """The images of one batch that loaded, as uint8, and the ones that did not."""

    indices: list[int]  # positions (in the list of paths) of the rows of ``pixels``
    pixels: torch.Tensor  # (n, C, H, W) uint8, C the processor's channel count
    failures: list[tuple[int, str]]  # (position, reason) of files that could not be read


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded, resized and center-cropped as ``processor`` does, kept uint8.

    Item ``i`` is ``(i, pixels, None)`` with (H, W, C) or (H, W) uint8 pixels (numpy), or
    ``(i, None, reason)``. Images have the processor's channels (one per ``image_mean`` value),
    decoded as the processor decodes them. A batch of items is loaded by ``threads`` threads (Pillow releases
    the GIL while it decodes and resizes).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], processor: DeiTImageProcessor, draft: bool = False, threads: int = 1,
                 resize: str = "pil") -> None:
        if resize not in RESIZE_KERNELS:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_KERNELS)}, got {resize!r}")
        if resize == "torch" and processor.do_resize and processor.resample not in _TORCHVISION_MODES:
            raise ValueError(f"resize='torch' has no equivalent of PIL resampling filter {processor.resample}; use resize='pil'")
        self.paths = [os.fspath(p) for p in paths]
        self.processor = processor
        self.draft = draft
        self.threads = threads
        self.resize = resize
        self.channels = len(processor.image_mean)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, self._load(self.paths[index]), None
        except ImageReadError as err:
            return index, None, err.reason
        except (OSError, ValueError) as err:
            return index, None, str(err) or type(err).__name__

    def __getitems__(self, indices: list[int]) -> list[tuple[int, np.ndarray | None, str | None]]:
        # DataLoader fetches a whole batch through this method when it exists.
        if self.threads <= 1 or len(indices) == 1:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            return list(pool.map(self.__getitem__, indices))

    def _load(self, path: str) -> np.ndarray:
        if self.resize == "torch":
            return self._torch_resize_and_crop(self._decode_tensor(path))
        proc = self.processor
        pil = self._decode_pil(path)
        if proc.do_resize:
            pil = proc.resize(pil)
        if proc.do_center_crop:
            pil = proc.center_crop(pil)
        return np.asarray(pil)

    def _decode_pil(self, path: str) -> Image.Image:
        """The file as an upright 8-bit image as the processor decodes it (RGB or L; RGBA for four
        channels), JPEG decoded at a reduced size with ``draft``."""
        proc = self.processor
        image = read_image(path, path, draft=proc.resized_size if self.draft and proc.do_resize else None)
        return decode_image(image, path, None, keep_float=False, channels=self.channels).pil

    def _decode_tensor(self, path: str) -> torch.Tensor:
        """The file as a (C, H, W) uint8 tensor (C = 1 for grayscale), EXIF orientation applied."""
        plain_rgb = self.channels == 3 and not self.draft
        pixels = torch.from_numpy(open_image_array(path, path) if plain_rgb else np.array(self._decode_pil(path)))
        return pixels.permute(2, 0, 1) if pixels.ndim == 3 else pixels[None]

    def _torch_resize_and_crop(self, image: torch.Tensor) -> np.ndarray:
        import torchvision.transforms.v2.functional as tvF

        proc = self.processor
        height, width = image.shape[1:]
        if proc.do_resize:
            height, width = proc.resized_size(height, width)
            interpolation = tvF.InterpolationMode(_TORCHVISION_MODES[proc.resample])
            image = tvF.resize(image, [height, width], interpolation=interpolation, antialias=True)
        pixels = image.permute(1, 2, 0).numpy() if image.shape[0] > 1 else image[0].numpy()
        if proc.do_center_crop:
            pixels = proc.center_crop(pixels, input_data_format="channels_last")
        return pixels


def _channels_first(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) or grayscale (H, W) -> a (C, H, W) view, grayscale repeated in ``channels``."""
    return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else np.broadcast_to(pixels, (channels, *pixels.shape))


def _collate(items: list[tuple[int, np.ndarray | None, str | None]], channels: int) -> LoadedBatch:
    loaded = [(i, px) for i, px, _ in items if px is not None]
    failures = [(i, reason) for i, px, reason in items if px is None]
    if loaded:
        shapes = {px.shape[:2] for _, px in loaded}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} cannot form a batch; enable center crop")
        # numpy, not torch.stack: its strided uint8 copy is much faster here (measured).
        pixels = torch.from_numpy(np.stack([_channels_first(px, channels) for _, px in loaded]))
    else:
        pixels = torch.empty(0, channels, 0, 0, dtype=torch.uint8)
    return LoadedBatch([i for i, _ in loaded], pixels, failures)


def default_num_workers(num_files: int, batch_size: int) -> int:
    """Worker processes worth starting: none for a single batch (start-up would dominate),
    else one per core up to 8."""
    if num_files <= batch_size:
        return 0
    return min(os.cpu_count() or 1, 8)


def load_batches(
    paths: Sequence[str | os.PathLike],
    processor: DeiTImageProcessor,
    batch_size: int = 16,
    num_workers: int | None = None,
    draft: bool = False,
    threads: int = 1,
    resize: str = "pil",
) -> Iterator[LoadedBatch]:
    """Batches of uint8 crops of ``paths``, in order, decoded in ``num_workers`` processes
    (default: :func:`default_num_workers`), each loading a batch with ``threads`` threads, resized
    by the ``resize`` kernel ("pil" or "torch", see the module docstring). Pass each batch's
    pixels to :func:`to_model_input`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    workers = default_num_workers(len(paths), batch_size) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, processor, draft=draft, threads=threads, resize=resize), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=partial(_collate, channels=len(processor.image_mean)), prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    yield from loader


def to_model_input(
    pixels: torch.Tensor, processor: DeiTImageProcessor, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Rescale and normalize a uint8 (n, C, H, W) batch as ``processor`` does, on ``device``.

    The uint8 batch is moved first (4x fewer bytes than float32); each 8-bit level is then
    mapped through the processor's per-channel lookup table, so the float32 result equals the
    processor's output exactly. ``dtype`` is the model's (the table is rounded once).
    """
    table = processor.level_table()
    channels = table.shape[0]
    if pixels.shape[1] != channels:
        raise ValueError(f"the batch has {pixels.shape[1]} channels but the processor's image_mean/image_std have {channels} values")
    pixels = pixels.to(device)
    if pixels.device.type == "cpu":
        # One index_select per contiguous (sample, channel) plane, straight into the output:
        # 2.5x faster than numpy's take or a gather over the whole batch (measured).
        table = torch.from_numpy(table).to(dtype)
        levels = pixels.contiguous().int()
        values = torch.empty(levels.shape, dtype=dtype)
        for sample in range(levels.shape[0]):
            for c in range(channels):
                torch.index_select(table[c], 0, levels[sample, c].view(-1), out=values[sample, c].view(-1))
        return values
    # (channels, 256) table indexed by channel * 256 + level: one gather for the whole batch.
    table = torch.from_numpy(table).to(device=pixels.device, dtype=dtype)
    offsets = torch.arange(0, channels * 256, 256, device=pixels.device, dtype=torch.int32).view(1, channels, 1, 1)
    return table.view(-1)[pixels.int() + offsets]
