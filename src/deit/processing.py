"""DeiT image processor: resize -> center crop -> rescale -> normalize.

Mirrors the API and the numbers of the Hugging Face PIL-backend DeiT image
processor (``DeiTImageProcessorPil`` in transformers 5.x, ``DeiTImageProcessor``
before): resizing is done by Pillow on 8-bit images, the crop uses the same
offsets and zero padding, and rescale + normalize are computed in float32 the
same way, so uint8 inputs give bit-identical outputs.

Speed comes from keeping pixels uint8 until the very end: resize and crop run
inside Pillow, and rescale + normalize is one 256-entry lookup table per
channel instead of float arithmetic over the whole image.

Files, PIL images, arrays and tensors become pixels in :mod:`deit.images` (EXIF
orientation, the mode policy, value ranges), as on every other path; this module
holds the processor, its settings and its ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import (
    ALLOWED_CHANNELS,
    DEFAULT_CROP_PCT,
    DecodedImage,
    ImageInput,
    channel_axis,
    decode_image,
    eval_resize_size,
    eval_sizes,
    flatten_images,
    float_to_255,
)
from .atomic import atomic_write_text

__all__ = [
    "BatchFeature",
    "DeiTImageProcessor",
    "DeiTFeatureExtractor",
    "DEFAULT_CROP_PCT",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "PREPROCESSOR_CONFIG_NAME",
    "eval_resize_size",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

_RESAMPLE_NAMES = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_MAX_WORKERS = 8  # threads for batches; resizing scales well up to about this many
# Keys of the Hugging Face file we do not keep: the type key is rewritten by us.
_DROPPED_KEYS = {"image_processor_type", "feature_extractor_type"}


class BatchFeature(dict):
    """A dict of model inputs (``{"pixel_values": ...}``) readable by attribute."""

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not real attributes; missing keys must raise
        # AttributeError (not KeyError) so copy/pickle/hasattr behave.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no key {name!r}; keys: {list(self)}") from None

    def __getstate__(self) -> dict:
        return dict(self)

    def __setstate__(self, state: dict) -> None:
        self.update(state)

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move torch tensors to a device and/or cast floating tensors to a dtype.

        Accepts what ``torch.Tensor.to`` accepts (``"cuda"``, ``torch.float16``, ``device=``,
        ``dtype=``, ``non_blocking=``). Like Hugging Face, a dtype only applies to floating
        tensors so integer inputs (ids, masks) keep their type.
        """
        import torch

        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        non_blocking = kwargs.pop("non_blocking", False)
        if kwargs:
            raise TypeError(f"BatchFeature.to() got unexpected keyword arguments {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise TypeError(f"BatchFeature.to() expects a device or a torch.dtype, got {type(arg).__name__}")
        out = BatchFeature()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                if dtype is not None and torch.is_floating_point(value):
                    value = value.to(device=device, dtype=dtype, non_blocking=non_blocking)
                elif device is not None:
                    value = value.to(device=device, non_blocking=non_blocking)
            out[key] = value
        return out


# --------------------------------------------------------------------------- config parsing


def _resample_to_int(resample: Any) -> int:
    if isinstance(resample, bool):
        raise TypeError(f"resample must be a PIL resampling filter, got {resample!r}")
    if isinstance(resample, (int, np.integer)):
        value = int(resample)
    else:
        # Strings and torchvision's InterpolationMode (whose .value is the lowercase name).
        name = getattr(resample, "value", resample)
        if not isinstance(name, str) or name.lower() not in _RESAMPLE_NAMES:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE_NAMES)} or a PIL filter int, got {resample!r}")
        value = int(_RESAMPLE_NAMES[name.lower()])
    if value not in {int(m) for m in Image.Resampling}:
        raise ValueError(f"resample={value} is not a PIL resampling filter (valid: 0-5)")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _parse_size(size: Any, what: str, allow_shortest_edge: bool) -> dict[str, int]:
    """int -> square; (h, w) -> dict; dicts with height/width (or shortest_edge) are checked."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        side = _positive_int(size, what)
        return {"height": side, "width": side}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {"height": _positive_int(size[0], f"{what}[0]"), "width": _positive_int(size[1], f"{what}[1]")}
    if isinstance(size, Mapping):
        keys = {k for k, v in size.items() if v is not None}
        if keys == {"height", "width"}:
            return {"height": _positive_int(size["height"], f"{what}['height']"),
                    "width": _positive_int(size["width"], f"{what}['width']")}
        if allow_shortest_edge and keys == {"shortest_edge"}:
            return {"shortest_edge": _positive_int(size["shortest_edge"], f"{what}['shortest_edge']")}
    allowed = '{"height": H, "width": W}' + (' or {"shortest_edge": N}' if allow_shortest_edge else "")
    raise ValueError(f"{what} must be an int, a (height, width) pair or a dict {allowed}; got {size!r}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _parse_channel_stats(value: Any, what: str, channels: int = 3) -> tuple[float, ...]:
    """A float (the same for every channel) or one float per channel: 3 for RGB images, 1 for
    grayscale, 4 for RGBA; ``channels`` is the count a float stands for."""
    if _is_scalar(value):
        value = (value,) * channels
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a float or 3 floats (one per RGB channel), got {value!r}") from None
    if len(stats) not in ALLOWED_CHANNELS:
        raise ValueError(f"{what} must have 3 values (one per RGB channel), or 1 / 4 for grayscale / RGBA images; "
                         f"got {len(stats)}: {value!r}")
    return stats


def _parse_mean_std(mean: Any, std: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std with one value per output channel; a float takes the other's channel count."""
    sequence = std if _is_scalar(mean) else mean
    channels = len(sequence) if np.ndim(sequence) == 1 else 3  # (anything else is reported by the parser)
    mean_values = _parse_channel_stats(mean, "image_mean", channels)
    std_values = _parse_channel_stats(std, "image_std", channels)
    if len(mean_values) != len(std_values):
        raise ValueError(f"image_mean has {len(mean_values)} values but image_std has {len(std_values)}; "
                         "give one per image channel to both")
    return mean_values, std_values


def _as_given(value: Any) -> Any:
    """How the reference's ``to_dict`` keeps a mean/std it was given: a float as a float, a
    sequence as a tuple."""
    return float(value) if _is_scalar(value) else tuple(float(v) for v in value)


def _parse_bool(value: Any, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class _CallSettings:
    """The settings of one :meth:`DeiTImageProcessor.preprocess` call (the processor's, overridden)."""

    do_resize: bool
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int]
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_format: str
    input_data_format: str | None
    return_tensors: str | None
    device: Any

    def scale_of(self, px: DecodedImage) -> float | None:
        """What an image's levels are multiplied by: 1/255 for a float image already in [0, 1]
        (so it is rescaled exactly once), else the rescale factor when rescaling."""
        if px.prescaled:
            return 1.0 / 255.0
        return self.rescale_factor if self.do_rescale else None


# --------------------------------------------------------------------------- geometry


def _resize_target(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        # Same rounding as Hugging Face: the long side is truncated, not rounded.
        short, long = (width, height) if width <= height else (height, width)
        new_short = size["shortest_edge"]
        new_long = int(new_short * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return size["height"], size["width"]


def _crop_box(height: int, width: int, crop: dict[str, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the center crop; may extend past the image.

    Hugging Face crops at top = (h - ch) // 2, and when the image is smaller pads with zeros
    so that it sits ceil((ch - h) / 2) from the top. Python's floor division gives both at
    once: (h - ch) // 2 == -ceil((ch - h) / 2), so one box covers cropping and padding.
    """
    ch, cw = crop["height"], crop["width"]
    top, left = (height - ch) // 2, (width - cw) // 2
    return left, top, left + cw, top + ch


def _crop_array(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    h, w = a.shape[:2]
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return a[top:bottom, left:right]
    out = np.zeros((bottom - top, right - left) + a.shape[2:], dtype=a.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(bottom, h), min(right, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = a[sy0:sy1, sx0:sx1]
    return out


def _to_channels_last(image: np.ndarray, input_data_format: str | None) -> tuple[np.ndarray, bool]:
    """(H, W, C) view of a 2-D or 3-D image, and whether it was channels-first."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None], False
    if image.ndim != 3:
        raise ValueError(f"image: expected a 2-D (H, W) or 3-D (H, W, C) / (C, H, W) array, got shape {image.shape}")
    if channel_axis(image.shape, "image", input_data_format) == 0:
        return np.moveaxis(image, 0, -1), True
    return image, False


def _from_channels_last(hwc: np.ndarray, channels_first: bool, data_format: str | None, ndim: int) -> np.ndarray:
    """Back to the input's layout (2-D stays 2-D), or to ``data_format`` when given."""
    if data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f"data_format must be 'channels_first', 'channels_last' or None, got {data_format!r}")
    if ndim == 2 and data_format is None:
        return hwc[..., 0]
    first = channels_first if data_format is None else data_format == "channels_first"
    return np.ascontiguousarray(np.moveaxis(hwc, -1, 0)) if first else hwc


# --------------------------------------------------------------------------- the processor


class DeiTImageProcessor:
    """Image processor for DeiT: resize (256x256 bicubic) -> center crop (224) -> rescale -> normalize.

    Compatible with Hugging Face's ``preprocessor_config.json`` in both directions. Defaults use
    the ImageNet mean/std the DeiT checkpoints were trained with.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | Image.Resampling | str = Image.Resampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.do_resize = _parse_bool(do_resize, "do_resize")
        self.size = _parse_size({"height": 256, "width": 256} if size is None else size, "size", True)
        self.resample = _resample_to_int(resample)
        self.do_center_crop = _parse_bool(do_center_crop, "do_center_crop")
        self.crop_size = _parse_size({"height": 224, "width": 224} if crop_size is None else crop_size,
                                     "crop_size", False)
        self.do_rescale = _parse_bool(do_rescale, "do_rescale")
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = _parse_bool(do_normalize, "do_normalize")
        given_mean = IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean
        given_std = IMAGENET_DEFAULT_STD if image_std is None else image_std
        self.image_mean, self.image_std = _parse_mean_std(given_mean, given_std)
        if any(s == 0.0 for s in self.image_std):
            raise ValueError(f"image_std must not contain zeros, got {self.image_std}")
        # to_dict() gives mean/std back in the form they were given (a float stays a float), as the reference.
        self._given_stats = (_as_given(given_mean), _as_given(given_std))
        # Keys of a foreign preprocessor_config.json we do not use are kept (and written back)
        # so a load/save round trip does not lose them.
        self.extra_config = {k: v for k, v in kwargs.items() if k not in _DROPPED_KEYS}

    # ------------------------------------------------------------------ calling

    def __call__(self, images: ImageInput, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """Preprocess an image or a batch; see :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: ImageInput,
        return_tensors: str | None = None,
        *,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | Image.Resampling | str | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        data_format: str = "channels_first",
        input_data_format: str | None = None,
        device: Any = None,
        do_convert_rgb: bool | None = None,
    ) -> BatchFeature:
        """Turn images into ``{"pixel_values": ...}``.

        ``images``: a PIL image, numpy array or torch tensor (HWC or CHW; uint8, uint16 or
        float in [0, 1]), a file path, a list of those, or a 4-D batch. Every setting of the
        processor can be overridden for this call. ``return_tensors``: ``"pt"`` (float32 torch
        tensor, N x C x H x W), ``"np"`` (numpy array), ``"tf"`` / ``"jax"`` (a TensorFlow / JAX
        array of the same values) or ``None`` (list of numpy arrays).
        The output has one channel per ``image_mean`` / ``image_std`` value: with 3 (the default)
        every image becomes RGB (alpha dropped, grayscale repeated); with 1 or 4, grayscale or RGBA
        images keep their channels and others are refused. ``do_convert_rgb`` is accepted for
        Hugging Face compatibility.
        """
        call = self._settings_for_call(
            return_tensors=return_tensors, do_resize=do_resize, size=size, resample=resample, do_center_crop=do_center_crop,
            crop_size=crop_size, do_rescale=do_rescale, rescale_factor=rescale_factor, do_normalize=do_normalize,
            image_mean=image_mean, image_std=image_std, data_format=data_format, input_data_format=input_data_format, device=device,
        )
        items = flatten_images(images)
        workers = min(len(items), os.cpu_count() or 1, _MAX_WORKERS)
        if workers > 1:
            # Pillow releases the GIL while decoding and resizing, which is most of the work.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                decoded = list(pool.map(lambda entry: self._prepare(entry, call), items))
        else:
            decoded = [self._prepare(entry, call) for entry in items]
        return _pixel_values(items, decoded, call)

    def _settings_for_call(self, *, return_tensors: Any, do_resize: Any, size: Any, resample: Any, do_center_crop: Any, crop_size: Any,
                           do_rescale: Any, rescale_factor: Any, do_normalize: Any, image_mean: Any, image_std: Any,
                           data_format: str, input_data_format: str | None, device: Any) -> _CallSettings:
        """The processor's settings with this call's overrides, each checked."""
        mean, std = _parse_mean_std(self.image_mean if image_mean is None else image_mean,
                                    self.image_std if image_std is None else image_std)
        call = _CallSettings(
            do_resize=self.do_resize if do_resize is None else _parse_bool(do_resize, "do_resize"),
            size=self.size if size is None else _parse_size(size, "size", True),
            resample=self.resample if resample is None else _resample_to_int(resample),
            do_center_crop=self.do_center_crop if do_center_crop is None else _parse_bool(do_center_crop, "do_center_crop"),
            crop_size=self.crop_size if crop_size is None else _parse_size(crop_size, "crop_size", False),
            do_rescale=self.do_rescale if do_rescale is None else _parse_bool(do_rescale, "do_rescale"),
            rescale_factor=self.rescale_factor if rescale_factor is None else float(rescale_factor),
            do_normalize=self.do_normalize if do_normalize is None else _parse_bool(do_normalize, "do_normalize"),
            mean=mean, std=std, data_format=data_format, input_data_format=input_data_format,
            return_tensors=getattr(return_tensors, "value", return_tensors),  # HF's TensorType enum
            device=device,
        )
        if call.do_normalize and any(s == 0.0 for s in std):
            raise ValueError(f"image_std must not contain zeros, got {std}")
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first', 'channels_last' or None, "
                             f"got {input_data_format!r}")
        if call.return_tensors not in (None, "pt", "np", "tf", "jax"):
            raise ValueError(f"return_tensors must be 'pt', 'np', 'tf', 'jax' or None, got {call.return_tensors!r}")
        if device is not None and call.return_tensors != "pt":
            raise ValueError("device= needs return_tensors='pt'")
        return call

    def _prepare(self, entry: tuple[str, Any], call: _CallSettings) -> DecodedImage:
        """One image decoded, resized and cropped (8-bit, or float when nothing is resized)."""
        label, item = entry
        px = decode_image(item, label, call.input_data_format, keep_float=not call.do_resize, channels=len(call.mean))
        if px.pil is not None:
            if call.do_resize:
                px.pil = self.resize(px.pil, call.size, call.resample)
            if call.do_center_crop:
                px.pil = self.center_crop(px.pil, call.crop_size)
        elif call.do_center_crop:
            px.array = self.center_crop(px.array, call.crop_size, input_data_format="channels_last")
        return px

    # ------------------------------------------------------------ the steps, one by one
    # The reference's processors have these as methods that users call in turn on numpy images.
    # Each takes a PIL image (and gives one back: what preprocess and deit.loading use) or a
    # numpy array, channels-last or channels-first (``input_data_format``, else inferred), and
    # gives back the same layout unless ``data_format`` asks for the other.

    def resized_size(self, height: int, width: int, size: int | Sequence[int] | Mapping[str, int] | None = None) -> tuple[int, int]:
        """(height, width) that :meth:`resize` gives an image of ``height`` x ``width``."""
        return _resize_target(height, width, self.size if size is None else _parse_size(size, "size", True))

    def resize(
        self,
        image: Image.Image | np.ndarray,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | Image.Resampling | str | None = None,
        data_format: str | None = None,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> Image.Image | np.ndarray:
        """Resize to ``size`` (default: the processor's; ``{"shortest_edge": n}`` keeps the aspect)
        with Pillow's ``resample`` filter (default: the processor's) on 8-bit pixels, as the
        reference. Arrays: uint8, or float on the 0..1 / 0..255 scale (rounded to 8-bit levels for
        the resize, returned as float32 on the same scale)."""
        resample = self.resample if resample is None else _resample_to_int(resample)
        if isinstance(image, Image.Image):
            height, width = self.resized_size(image.height, image.width, size)
            return image if (height, width) == (image.height, image.width) else image.resize((width, height), resample=resample)
        hwc, channels_first = _to_channels_last(image, input_data_format)
        floats = np.issubdtype(hwc.dtype, np.floating)
        if floats:
            f255, zero_to_one = float_to_255(hwc, "image")
            hwc = np.rint(f255).astype(np.uint8)
        elif hwc.dtype != np.uint8:
            raise TypeError(f"resize takes uint8 or float images, got {hwc.dtype}")
        pil = Image.fromarray(np.ascontiguousarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc))
        out = np.asarray(self.resize(pil, size, resample))
        out = out[..., None] if out.ndim == 2 else out
        if floats:
            out = out.astype(np.float32) / np.float32(255.0) if zero_to_one else out.astype(np.float32)
        return _from_channels_last(out, channels_first, data_format, image.ndim)

    def center_crop(
        self,
        image: Image.Image | np.ndarray,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        data_format: str | None = None,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> Image.Image | np.ndarray:
        """The centre ``size`` (default: the processor's ``crop_size``) of the image; an image
        smaller than that is padded with zeros, at the reference's offsets."""
        crop = self.crop_size if size is None else _parse_size(size, "crop_size", False)
        if isinstance(image, Image.Image):
            box = _crop_box(image.height, image.width, crop)
            # Pillow fills the area outside the image with zeros.
            return image if box == (0, 0, image.width, image.height) else image.crop(box)
        hwc, channels_first = _to_channels_last(image, input_data_format)
        out = _crop_array(hwc, _crop_box(hwc.shape[0], hwc.shape[1], crop))
        return _from_channels_last(out, channels_first, data_format, image.ndim)

    def rescale(
        self,
        image: np.ndarray,
        scale: float | None = None,
        data_format: str | None = None,
        dtype: Any = np.float32,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``image * scale`` (default: the processor's ``rescale_factor``), computed in float64 and
        returned as ``dtype``, as the reference."""
        scale = self.rescale_factor if scale is None else float(scale)
        out = (np.asarray(image).astype(np.float64) * scale).astype(dtype)
        if data_format is None or out.ndim != 3:
            return out
        hwc, channels_first = _to_channels_last(out, input_data_format)
        return _from_channels_last(hwc, channels_first, data_format, 3)

    def normalize(
        self,
        image: np.ndarray,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        data_format: str | None = None,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``(image - mean) / std`` per channel (default: the processor's mean/std), in the image's
        float dtype (float32 for integer images); one mean/std value per channel, any count."""
        mean = self.image_mean if mean is None else mean
        std = self.image_std if std is None else std
        hwc, channels_first = _to_channels_last(np.asarray(image), input_data_format)
        if not np.issubdtype(hwc.dtype, np.floating):
            hwc = hwc.astype(np.float32)
        channels = hwc.shape[-1]
        mean_values = np.broadcast_to(np.asarray(mean, dtype=hwc.dtype), (channels,)) if _is_scalar(mean) or len(mean) == channels else None
        std_values = np.broadcast_to(np.asarray(std, dtype=hwc.dtype), (channels,)) if _is_scalar(std) or len(std) == channels else None
        if mean_values is None or std_values is None:
            raise ValueError(f"normalize: the image has {channels} channel(s); mean and std need one value each per channel "
                             f"(got {mean!r} and {std!r})")
        return _from_channels_last((hwc - mean_values) / std_values, channels_first, data_format, np.ndim(image))

    def level_table(self) -> np.ndarray:
        """(channels, 256) float32: what rescale + normalize make of each 8-bit level of each
        channel, bit for bit what :meth:`preprocess` computes (it reads this table)."""
        scale = self.rescale_factor if self.do_rescale else None
        return _lookup_table(scale, self.do_normalize, self.image_mean, self.image_std)

    # ------------------------------------------------------------------ choosing one

    @classmethod
    def for_eval(cls, image_size: int, crop_pct: float = DEFAULT_CROP_PCT, **kwargs: Any) -> DeiTImageProcessor:
        """The evaluation resize rule of :mod:`deit.images` for a model of ``image_size``: the
        shorter side to ``int(image_size / crop_pct)``, the centre ``image_size`` square; other
        settings from ``kwargs`` (default: bicubic, ImageNet mean/std)."""
        size, crop_size = eval_sizes(image_size, crop_pct)
        return cls(size=size, crop_size=crop_size, **kwargs)

    @classmethod
    def for_model(cls, source: str | os.PathLike, image_size: int) -> DeiTImageProcessor:
        """The processor of the model at ``source`` (a folder or a weights file): the
        ``preprocessor_config.json`` beside it, else :meth:`for_eval` of ``image_size``."""
        path = Path(source)
        folder = path if path.is_dir() else path.parent
        if (folder / PREPROCESSOR_CONFIG_NAME).is_file():
            return cls.from_pretrained(folder)
        return cls.for_eval(image_size)

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content (Hugging Face keys)."""
        d: dict[str, Any] = dict(self.extra_config)
        d.update(
            image_processor_type="DeiTImageProcessor",
            do_resize=self.do_resize,
            size=dict(self.size),
            resample=self.resample,
            do_center_crop=self.do_center_crop,
            crop_size=dict(self.crop_size),
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self._given_stats[0],
            image_std=self._given_stats[1],
        )
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        atomic_write_text(json_file_path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write ``preprocessor_config.json`` into ``save_directory`` (created if needed), atomically."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {os.fspath(save_directory)!r} is a file, not a directory")
        path = Path(save_directory) / PREPROCESSOR_CONFIG_NAME
        self.to_json_file(path)
        return [str(path)]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **kwargs: Any) -> DeiTImageProcessor:
        """Build from a config dict (ours or Hugging Face's, old or new); ``kwargs`` override it."""
        merged = dict(config)
        merged.update(kwargs)
        return cls(**merged)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike, **kwargs: Any) -> DeiTImageProcessor:
        with open(json_file, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(json_file)!r} is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{os.fspath(json_file)!r} must hold a JSON object, got {type(config).__name__}")
        return cls.from_dict(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> DeiTImageProcessor:
        """Load from a folder holding ``preprocessor_config.json``, a json file, or a Hub name
        (resolved like the models: cache, ``revision``, ``local_files_only``, ``HF_HUB_OFFLINE``).
        Other ``kwargs`` override the file."""
        from .hub import resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "local_files_only", "token") if k in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            return cls.from_json_file(path, **kwargs)
        return cls.from_json_file(resolve_file(path, PREPROCESSOR_CONFIG_NAME, **hub_kwargs), **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeiTImageProcessor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


DeiTFeatureExtractor = DeiTImageProcessor


# --------------------------------------------------------------------------- numeric kernels


def _pixel_values(items: list[tuple[str, Any]], decoded: list[DecodedImage], call: _CallSettings) -> BatchFeature:
    """The prepared images rescaled, normalized and laid out as ``call`` asks: 8-bit levels go
    through one lookup table per channel, float images (nothing resized) are computed."""
    channels = len(call.mean)
    # Raw uint8 pixels come back unchanged when neither rescale nor normalize is asked for
    # (as in Hugging Face); otherwise float32.
    raw = [px.pil is not None and call.scale_of(px) is None and not call.do_normalize for px in decoded]
    out_dtype = np.uint8 if all(raw) else np.float32
    shapes = [(px.pil.height, px.pil.width) if px.pil is not None else px.array.shape[:2] for px in decoded]

    def layout(h: int, w: int) -> tuple[int, int, int]:
        return (channels, h, w) if call.data_format == "channels_first" else (h, w, channels)

    batch = None
    if call.return_tensors is not None:
        if len(set(shapes)) != 1:
            detail = ", ".join(f"{label}: {s[0]}x{s[1]}" for (label, _), s in zip(items, shapes))
            raise ValueError(f"cannot stack images of different sizes into one tensor ({detail}); "
                             "enable center crop, use a height/width size, or pass return_tensors=None")
        batch = np.empty((len(decoded),) + layout(*shapes[0]), dtype=out_dtype)
        outputs = list(batch)
    else:
        outputs = [np.empty(layout(*s), dtype=out_dtype) for s in shapes]

    luts: dict[float | None, np.ndarray] = {}
    for px, out in zip(decoded, outputs):
        chw = out if call.data_format == "channels_first" else out.transpose(2, 0, 1)
        scale = call.scale_of(px)
        if px.pil is None:
            _write_channels(chw, _float_pixels(px.array, scale, call.do_normalize, call.mean, call.std, channels), None)
        elif out_dtype == np.uint8 or (scale is None and not call.do_normalize):
            _write_channels(chw, np.asarray(px.pil), None)
        else:
            if scale not in luts:
                luts[scale] = _lookup_table(scale, call.do_normalize, call.mean, call.std)
            _write_channels(chw, np.asarray(px.pil), luts[scale])
    return BatchFeature(pixel_values=outputs if batch is None else _as_tensors(batch, call.return_tensors, call.device))


def _as_tensors(batch: np.ndarray, return_tensors: str, device: Any) -> Any:
    """A numpy batch as the framework's array that ``return_tensors`` names."""
    if return_tensors == "np":
        return batch
    if return_tensors == "tf":
        from .tensorflow_import import import_dynamo_before_tensorflow

        import_dynamo_before_tensorflow()
        import tensorflow as tf

        return tf.convert_to_tensor(batch)
    if return_tensors == "jax":
        import jax.numpy as jnp

        return jnp.asarray(batch)
    import torch

    tensor = torch.from_numpy(batch)
    return tensor if device is None else tensor.to(device)


def _lookup_table(scale: float | None, do_normalize: bool, mean: Iterable[float],
                  std: Iterable[float]) -> np.ndarray:
    """(channels, 256) float32 table: output value of each 8-bit level for each channel.

    Computed with the same dtypes as Hugging Face (rescale in float64 then cast to float32,
    normalize in float32), so table entries equal its per-pixel results bit for bit.
    """
    levels = np.arange(256, dtype=np.float64)
    if scale is not None:
        levels = levels * scale
    values = levels.astype(np.float32)
    table = np.repeat(values[None, :], len(tuple(mean)), axis=0)
    if do_normalize:
        table = (table - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray(table, dtype=np.float32)


def _write_channels(chw_out: np.ndarray, pixels: np.ndarray, table: np.ndarray | None) -> None:
    """Write HWC (or HW grayscale) ``pixels`` into the (C, H, W) view ``chw_out``, via ``table`` if given."""
    for c in range(chw_out.shape[0]):
        plane = pixels if pixels.ndim == 2 else pixels[..., c]
        if table is None:
            chw_out[c] = plane
        else:
            np.take(table[c], plane, out=chw_out[c])


def _float_pixels(a: np.ndarray, scale: float | None, do_normalize: bool, mean: Sequence[float],
                  std: Sequence[float], channels: int = 3) -> np.ndarray:
    """Float path (no resize): HWC float32 on 0..255 -> rescaled/normalized HWC float32 with ``channels`` channels."""
    if a.shape[-1] == 1:
        a = np.repeat(a, channels, axis=-1)
    out = a.astype(np.float64) * scale if scale is not None else a
    out = out.astype(np.float32)
    if do_normalize:
        out = (out - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return out

