"""DeiT image processor: resize -> center crop -> rescale -> normalize.

Mirrors the API and the numbers of the Hugging Face PIL-backend DeiT image
processor (``DeiTImageProcessorPil`` in transformers 5.x, ``DeiTImageProcessor``
before): resizing is done by Pillow on 8-bit images, the crop uses the same
offsets and zero padding, and rescale + normalize are computed in float32 the
same way, so uint8 inputs give bit-identical outputs.

Speed comes from keeping pixels uint8 until the very end: resize and crop run
inside Pillow, and rescale + normalize is one 256-entry lookup table per
channel instead of float arithmetic over the whole image.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from .io import atomic_write_text

if TYPE_CHECKING:  # torch is only needed for return_tensors="pt" and tensor inputs
    import torch

__all__ = [
    "BatchFeature",
    "DeiTImageProcessor",
    "DeiTFeatureExtractor",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "PREPROCESSOR_CONFIG_NAME",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

ImageLike = Union[Image.Image, np.ndarray, "torch.Tensor", str, os.PathLike]
ImageInput = Union[ImageLike, Sequence[ImageLike]]

_RESAMPLE_NAMES = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_ALLOWED_CHANNELS = (1, 3, 4)
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


def _parse_channel_stats(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a float or 3 floats (one per RGB channel), got {value!r}") from None
    if len(stats) != 3:
        raise ValueError(f"{what} must have 3 values (one per RGB channel), got {len(stats)}: {value!r}")
    return stats  # type: ignore[return-value]


def _parse_bool(value: Any, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


# --------------------------------------------------------------------------- input decoding


def _channel_axis(shape: tuple[int, ...], label: str, input_data_format: str | None) -> int:
    """Index (0 or 2) of the channel axis of a 3-D image."""
    if input_data_format is not None:
        axis = 0 if input_data_format == "channels_first" else 2
        if shape[axis] not in _ALLOWED_CHANNELS:
            raise ValueError(
                f"{label}: image of shape {shape} has {shape[axis]} channels on its {input_data_format} axis; "
                "expected 1 (grayscale), 3 (RGB) or 4 (RGBA)"
            )
        return axis
    # Same preference as Hugging Face: channels-first wins when both ends could be channels.
    if shape[0] in _ALLOWED_CHANNELS:
        return 0
    if shape[2] in _ALLOWED_CHANNELS:
        return 2
    raise ValueError(
        f"{label}: cannot find the channel axis of an image of shape {shape}: expected 1 (grayscale), "
        f"3 (RGB) or 4 (RGBA) channels on the first or last axis, got {shape[0]} and {shape[2]}"
    )


def _int_to_uint8(a: np.ndarray, label: str, sixteen_bit: bool) -> np.ndarray:
    """Integer pixels -> uint8; 16-bit data is mapped 0..65535 -> 0..255 (v / 257, rounded)."""
    if a.dtype == np.uint8:
        return a
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"{label}: integer pixel values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit), "
                         f"got [{lo}, {hi}]")
    if not sixteen_bit and hi <= 255:
        return a.astype(np.uint8)
    # (v + 128) // 257 == round(v / 257) exactly (257 is odd, so there are no ties).
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_255(a: np.ndarray, label: str) -> tuple[np.ndarray, bool]:
    """Float pixels -> float32 on the 0..255 scale, and whether they were in [0, 1] (already rescaled)."""
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{label}: float image contains NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return a * np.float32(255.0), True
    if lo >= 0.0 and hi <= 255.0:
        return a, False
    raise ValueError(f"{label}: float pixel values must lie in [0, 1] (or [0, 255]), got [{lo:g}, {hi:g}]")


class _Pixels:
    """One decoded image: a PIL image (mode "RGB" or "L", 8-bit) or a float32 HWC array on the
    0..255 scale (only when no resize is asked for, to keep float precision)."""

    __slots__ = ("pil", "array", "prescaled")

    def __init__(self, pil: Image.Image | None = None, array: np.ndarray | None = None, prescaled: bool = False):
        self.pil = pil
        self.array = array
        # True when the input was float in [0, 1]: the user already rescaled it, so it is
        # divided by 255 exactly once whatever do_rescale says (no double rescale).
        self.prescaled = prescaled


def _decode_pil(img: Image.Image, label: str, keep_float: bool) -> _Pixels:
    mode = img.mode
    if mode in ("RGB", "L"):
        return _Pixels(pil=img)
    if mode == "1" or mode in ("LA", "La"):
        return _Pixels(pil=img.convert("L"))  # dropping alpha of LA = its L band
    if mode == "I" or mode.startswith("I;16"):
        return _decode_array(np.asarray(img), label, None, keep_float, sixteen_bit=True)
    if mode == "F":
        return _decode_array(np.asarray(img), label, None, keep_float)
    try:
        # RGBA/RGBX/P/PA/CMYK/YCbCr/...: Pillow's own conversion; alpha is dropped, not composited.
        return _Pixels(pil=img.convert("RGB"))
    except (ValueError, OSError) as err:
        raise ValueError(f"{label}: cannot convert a PIL image of mode {mode!r} to RGB ({err})") from None


def _decode_array(a: np.ndarray, label: str, input_data_format: str | None, keep_float: bool,
                  sixteen_bit: bool = False) -> _Pixels:
    if a.ndim == 3:
        axis = _channel_axis(a.shape, label, input_data_format)
        if axis == 0:
            a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 4:
            a = a[..., :3]  # RGBA -> RGB: drop alpha like PIL convert("RGB")
        elif a.shape[-1] == 1:
            a = a[..., 0]
    elif a.ndim != 2:
        raise ValueError(f"{label}: an image must be a 2-D (H, W) or 3-D (H, W, C) / (C, H, W) array, "
                         f"got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{label}: image has an empty side (shape {tuple(a.shape)})")

    if a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * np.uint8(255)
    elif a.dtype == np.uint16 or sixteen_bit:
        u8 = _int_to_uint8(a, label, sixteen_bit=True)
    elif np.issubdtype(a.dtype, np.integer):
        u8 = _int_to_uint8(a, label, sixteen_bit=False)
    elif np.issubdtype(a.dtype, np.floating):
        f255, prescaled = _float_to_255(a, label)
        if keep_float:
            return _Pixels(array=f255 if f255.ndim == 3 else f255[..., None], prescaled=prescaled)
        # Pillow resizes 8-bit data; round (not truncate) to the nearest level.
        u8 = np.rint(f255).astype(np.uint8)
        return _Pixels(pil=Image.fromarray(np.ascontiguousarray(u8)), prescaled=prescaled)
    else:
        raise TypeError(f"{label}: unsupported pixel dtype {a.dtype}")
    return _Pixels(pil=Image.fromarray(np.ascontiguousarray(u8)))


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to check a type
    return torch is not None and isinstance(x, torch.Tensor)


def _tensor_to_numpy(t: "torch.Tensor") -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    try:
        return t.numpy()
    except TypeError:  # dtypes numpy lacks (e.g. uint16/uint32 in older torch)
        return t.to(torch.int64).numpy()


def _decode(item: Any, label: str, input_data_format: str | None, keep_float: bool) -> _Pixels:
    if isinstance(item, Image.Image):
        return _decode_pil(item, label, keep_float)
    if _is_torch_tensor(item):
        item = _tensor_to_numpy(item)
    if isinstance(item, np.ndarray):
        return _decode_array(item, label, input_data_format, keep_float)
    if isinstance(item, (str, os.PathLike)):
        return _decode_pil(_open_path(item, label), label, keep_float)
    raise TypeError(f"{label}: expected a PIL image, numpy array, torch tensor or file path, "
                    f"got {type(item).__name__}")


def _open_path(path: str | os.PathLike, label: str) -> Image.Image:
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise ValueError(f"{label}: URLs are not fetched ({text!r}); download the image and pass it or its path")
    if not os.path.isfile(text):
        raise ValueError(f"{label}: image file {text!r} does not exist")
    from PIL import ImageOps

    try:
        with Image.open(text) as img:
            img.load()
            # Camera photos store their orientation in EXIF; Hugging Face's load_image applies it too.
            return ImageOps.exif_transpose(img)
    except OSError as err:
        raise ValueError(f"{label}: cannot read {text!r} as an image ({err})") from None


def _flatten(images: Any) -> list[tuple[str, Any]]:
    """Flatten the accepted input structures into (label, single image) pairs."""

    def batch_or_single(x: Any, label: str) -> list[tuple[str, Any]]:
        ndim = getattr(x, "ndim", None)
        if ndim == 4:
            if x.shape[0] == 0:
                raise ValueError(f"{label}: empty batch (shape {tuple(x.shape)})")
            return [(f"{label}[{i}]", x[i]) for i in range(x.shape[0])]
        if ndim in (2, 3):
            return [(label, x)]
        raise ValueError(f"{label}: expected a 2-D/3-D image or a 4-D batch, got an array of shape {tuple(x.shape)}")

    def one(x: Any, label: str, depth: int) -> list[tuple[str, Any]]:
        if isinstance(x, Image.Image) or isinstance(x, (str, os.PathLike)):
            return [(label, x)]
        if isinstance(x, np.ndarray) or _is_torch_tensor(x):
            return batch_or_single(x, label)
        if isinstance(x, (list, tuple)):
            if depth >= 2:
                raise TypeError(f"{label}: images may be nested at most two lists deep")
            if len(x) == 0:
                raise ValueError(f"{label}: empty list of images")
            out: list[tuple[str, Any]] = []
            for i, sub in enumerate(x):
                out.extend(one(sub, f"{label}[{i}]", depth + 1))
            return out
        raise TypeError(f"{label}: expected a PIL image, numpy array, torch tensor, file path or a list of them, "
                        f"got {type(x).__name__}")

    return one(images, "images", 0)


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
        self.image_mean = _parse_channel_stats(IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean,
                                               "image_mean")
        self.image_std = _parse_channel_stats(IMAGENET_DEFAULT_STD if image_std is None else image_std, "image_std")
        if any(s == 0.0 for s in self.image_std):
            raise ValueError(f"image_std must not contain zeros, got {self.image_std}")
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
        tensor, N x 3 x H x W), ``"np"`` (numpy array), ``"tf"`` / ``"jax"`` (a TensorFlow / JAX array of the
        same values) or ``None`` (list of numpy arrays).
        ``do_convert_rgb`` is accepted for Hugging Face compatibility; images always become RGB.
        """
        do_resize = self.do_resize if do_resize is None else _parse_bool(do_resize, "do_resize")
        size = self.size if size is None else _parse_size(size, "size", True)
        resample = self.resample if resample is None else _resample_to_int(resample)
        do_center_crop = self.do_center_crop if do_center_crop is None else _parse_bool(do_center_crop,
                                                                                           "do_center_crop")
        crop_size = self.crop_size if crop_size is None else _parse_size(crop_size, "crop_size", False)
        do_rescale = self.do_rescale if do_rescale is None else _parse_bool(do_rescale, "do_rescale")
        rescale_factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else _parse_bool(do_normalize, "do_normalize")
        mean = self.image_mean if image_mean is None else _parse_channel_stats(image_mean, "image_mean")
        std = self.image_std if image_std is None else _parse_channel_stats(image_std, "image_std")
        if do_normalize and any(s == 0.0 for s in std):
            raise ValueError(f"image_std must not contain zeros, got {std}")
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first', 'channels_last' or None, "
                             f"got {input_data_format!r}")
        return_tensors = getattr(return_tensors, "value", return_tensors)  # HF's TensorType enum
        if return_tensors not in (None, "pt", "np", "tf", "jax"):
            raise ValueError(f"return_tensors must be 'pt', 'np', 'tf', 'jax' or None, got {return_tensors!r}")
        if device is not None and return_tensors != "pt":
            raise ValueError("device= needs return_tensors='pt'")

        items = _flatten(images)

        def prepare(entry: tuple[str, Any]) -> _Pixels:
            label, item = entry
            px = _decode(item, label, input_data_format, keep_float=not do_resize)
            if px.pil is not None:
                img = px.pil
                if do_resize:
                    h, w = _resize_target(img.height, img.width, size)
                    if (h, w) != (img.height, img.width):
                        img = img.resize((w, h), resample=resample)
                if do_center_crop:
                    box = _crop_box(img.height, img.width, crop_size)
                    if box != (0, 0, img.width, img.height):
                        img = img.crop(box)  # Pillow fills the area outside the image with zeros
                px.pil = img
            elif do_center_crop:
                assert px.array is not None
                h, w = px.array.shape[:2]
                px.array = _crop_array(px.array, _crop_box(h, w, crop_size))
            return px

        workers = min(len(items), os.cpu_count() or 1, _MAX_WORKERS)
        if workers > 1:
            # Pillow releases the GIL while decoding and resizing, which is most of the work.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                decoded = list(pool.map(prepare, items))
        else:
            decoded = [prepare(entry) for entry in items]

        def scale_of(px: _Pixels) -> float | None:
            if px.prescaled:
                return 1.0 / 255.0
            return rescale_factor if do_rescale else None

        # Raw uint8 pixels come back unchanged when neither rescale nor normalize is asked for
        # (as in Hugging Face); otherwise float32.
        raw = [px.pil is not None and scale_of(px) is None and not do_normalize for px in decoded]
        out_dtype = np.uint8 if all(raw) else np.float32
        shapes = [(px.pil.height, px.pil.width) if px.pil is not None else px.array.shape[:2] for px in decoded]

        def layout(h: int, w: int) -> tuple[int, int, int]:
            return (3, h, w) if data_format == "channels_first" else (h, w, 3)

        if return_tensors is not None:
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
            chw = out if data_format == "channels_first" else out.transpose(2, 0, 1)
            scale = scale_of(px)
            if px.pil is not None:
                pixels = np.asarray(px.pil)
                if out_dtype == np.uint8 or (scale is None and not do_normalize):
                    _write_channels(chw, pixels, None)
                else:
                    if scale not in luts:
                        luts[scale] = _lookup_table(scale, do_normalize, mean, std)
                    _write_channels(chw, pixels, luts[scale])
            else:
                _write_channels(chw, _float_pixels(px.array, scale, do_normalize, mean, std), None)

        if return_tensors is None:
            return BatchFeature(pixel_values=outputs)
        if return_tensors == "np":
            return BatchFeature(pixel_values=batch)
        if return_tensors == "tf":
            from .tensorflow_import import import_dynamo_before_tensorflow

            import_dynamo_before_tensorflow()
            import tensorflow as tf

            return BatchFeature(pixel_values=tf.convert_to_tensor(batch))
        if return_tensors == "jax":
            import jax.numpy as jnp

            return BatchFeature(pixel_values=jnp.asarray(batch))
        import torch

        tensor = torch.from_numpy(batch)
        if device is not None:
            tensor = tensor.to(device)
        return BatchFeature(pixel_values=tensor)

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
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
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


def _lookup_table(scale: float | None, do_normalize: bool, mean: Iterable[float],
                  std: Iterable[float]) -> np.ndarray:
    """(3, 256) float32 table: output value of each 8-bit level for each channel.

    Computed with the same dtypes as Hugging Face (rescale in float64 then cast to float32,
    normalize in float32), so table entries equal its per-pixel results bit for bit.
    """
    levels = np.arange(256, dtype=np.float64)
    if scale is not None:
        levels = levels * scale
    values = levels.astype(np.float32)
    table = np.repeat(values[None, :], 3, axis=0)
    if do_normalize:
        table = (table - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray(table, dtype=np.float32)


def _write_channels(chw_out: np.ndarray, pixels: np.ndarray, table: np.ndarray | None) -> None:
    """Write HWC (or HW grayscale) ``pixels`` into the (3, H, W) view ``chw_out``, via ``table`` if given."""
    for c in range(3):
        plane = pixels if pixels.ndim == 2 else pixels[..., c]
        if table is None:
            chw_out[c] = plane
        else:
            np.take(table[c], plane, out=chw_out[c])


def _float_pixels(a: np.ndarray, scale: float | None, do_normalize: bool, mean: Sequence[float],
                  std: Sequence[float]) -> np.ndarray:
    """Float path (no resize): HWC float32 on 0..255 -> rescaled/normalized HWC float32 with 3 channels."""
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    out = a.astype(np.float64) * scale if scale is not None else a
    out = out.astype(np.float32)
    if do_normalize:
        out = (out - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return out

