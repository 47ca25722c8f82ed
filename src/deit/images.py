"""From a file to pixels: the one place that opens an image, and the one evaluation resize rule.

Everything that reads an image file or encoded bytes (the image processor, ``deit predict``'s
batch loader, the training data sets, ``deit attention``, the benchmarks) calls
:func:`open_image` (or :func:`read_image` / :func:`open_rgb`), so every path sees the same
pixels:

- **orientation**: a photo's EXIF orientation is applied (a phone photo stored sideways comes
  out upright), as transformers' ``load_image`` and ``datasets``' image decoder do;
- **modes** (:func:`to_8bit`): 8-bit RGB and grayscale (``L``) stay as they are; 1-bit and
  grayscale + alpha become ``L``; 16-bit (``I;16``, ``I``) and float (``F``) grayscale are
  mapped to 8 bits (:func:`int_to_uint8`, :func:`float_to_255`); palette images with a
  transparent colour go through RGBA so Pillow maps colours, not indices; every other mode
  (RGBA, CMYK, YCbCr, palette, ...) is converted by Pillow to RGB, alpha dropped (not
  composited), as the reference processors do;
- **which files**: :data:`IMAGE_SUFFIXES`, the files a folder contributes.

**The evaluation resize rule** for a checkpoint without a ``preprocessor_config.json``
(:func:`eval_sizes`): the shorter side to ``int(image_size / crop_pct)`` (bicubic), then the
centre ``image_size`` square, ``crop_pct`` = 0.875. It is the DeiT authors' evaluation
transform, with which their published accuracies were measured (and timm's), and it keeps the
aspect ratio: a 4:3 photo is not squashed into a square before the crop. (The Hugging Face
processor's default, a 256 x 256 resize, distorts non-square images; checkpoints that carry a
``preprocessor_config.json`` still get exactly what it says.)
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import DeitError

if TYPE_CHECKING:  # torch is only needed for tensor inputs, and then already imported
    import torch

__all__ = [
    "IMAGE_SUFFIXES", "DEFAULT_CROP_PCT", "ImageReadError", "ImageSource",
    "read_image", "open_image", "open_rgb", "open_image_array", "to_8bit", "to_rgb",
    "is_wide_mode", "int_to_uint8", "float_to_255", "eval_resize_size", "eval_sizes",
    "ALLOWED_CHANNELS", "ImageLike", "ImageInput", "DecodedImage", "channel_axis", "decode_image", "flatten_images",
]

# The files a folder contributes (lowercase; compare with ``path.suffix.lower()``).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Share of the resized image that the evaluation centre crop keeps (224 of 256).
DEFAULT_CROP_PCT = 0.875

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]
ImageLike = Union[Image.Image, np.ndarray, "torch.Tensor", str, os.PathLike]
ImageInput = Union[ImageLike, Sequence[ImageLike]]
# Channel counts an image may have: grayscale, RGB, RGBA.
ALLOWED_CHANNELS = (1, 3, 4)
# Given the stored (height, width) of a JPEG, the smallest (height, width) worth decoding.
DraftSize = Callable[[int, int], tuple[int, int]]

# What Pillow raises for a file it cannot decode (a plugin may raise any of these).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageReadError(DeitError, ValueError):
    """A file (or bytes) that is not a readable image; ``reason`` is the short why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return "the given bytes" if isinstance(source, (bytes, bytearray)) else "the given file object"


def read_image(source: ImageSource, label: str | None = None, *, draft: DraftSize | None = None) -> Image.Image:
    """The image in ``source`` (a path, encoded bytes or a binary file), decoded and upright
    (EXIF orientation applied), in the file's own mode. ``draft``: for JPEG files, ask the
    decoder for a reduced size (DCT scaling) of at least ``draft(height, width)``.

    Raises :class:`ImageReadError` (a ValueError) naming ``label`` and the file.
    """
    label = label or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    where = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and text.startswith(("http://", "https://")):
            raise ImageReadError(f"{label}: URLs are not fetched ({text!r}); download the image and pass it or its path", "a URL")
        if not os.path.isfile(text):
            raise ImageReadError(f"{label}: image file {text!r} does not exist", "file does not exist")
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(opened) as image:
            if draft is not None and image.format == "JPEG":
                height, width = draft(image.height, image.width)
                # The decoder picks the largest DCT scale that keeps both sides >= the request.
                image.draft(image.mode, (width, height))
            image.load()
            # In place: without a rotation the image is not copied (what the default mode does).
            ImageOps.exif_transpose(image, in_place=True)
            return image
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: cannot read {where} as an image (not an image file)", "not an image file") from None
    except _DECODE_ERRORS as err:
        reason = str(err) or type(err).__name__
        raise ImageReadError(f"{label}: cannot read {where} as an image ({reason})", reason) from None


def open_image(source: ImageSource, label: str | None = None, *, draft: DraftSize | None = None) -> Image.Image:
    """:func:`read_image`, then :func:`to_8bit`: an upright 8-bit ``RGB`` or ``L`` image."""
    image = read_image(source, label, draft=draft)
    return to_8bit(image, label or "image")


def open_rgb(source: ImageSource, label: str | None = None) -> Image.Image:
    """:func:`open_image` as RGB (grayscale repeated in the three channels): what the training
    transforms take."""
    return to_rgb(read_image(source, label), label or "image")


def is_wide_mode(mode: str) -> bool:
    """Whether Pillow ``mode`` holds more than 8 bits per pixel (16/32-bit integer or float
    grayscale), which :func:`to_8bit` maps to 8 bits by value range."""
    return mode in ("I", "F") or mode.startswith("I;16")


def to_8bit(image: Image.Image, label: str = "image") -> Image.Image:
    """The mode policy (module docstring): ``image`` as 8-bit ``RGB`` or ``L``."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")  # LA's L band: alpha dropped
    if is_wide_mode(mode):
        pixels = np.asarray(image)
        if mode == "F":
            pixels = np.rint(float_to_255(pixels, label)[0]).astype(np.uint8)
        else:
            pixels = int_to_uint8(pixels, label, sixteen_bit=True)
        return Image.fromarray(np.ascontiguousarray(pixels))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow maps a palette's transparent entry through RGBA
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"{label}: cannot convert a PIL image of mode {mode!r} to RGB ({err})") from None


def to_rgb(image: Image.Image, label: str = "image") -> Image.Image:
    """:func:`to_8bit`, grayscale repeated into RGB."""
    image = to_8bit(image, label)
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image_array(path: str | os.PathLike, label: str | None = None) -> np.ndarray:
    """:func:`open_image` as a (H, W, 3) or (H, W) uint8 array.

    RGB and grayscale JPEG files without an EXIF rotation are decoded by ``simplejpeg`` when it
    is installed (``pip install deit[fast]``): the same libjpeg-turbo decode with the settings
    Pillow uses (identical pixels, checked in the tests), written straight into the array
    instead of into Pillow's image memory and copied out -- about a quarter less time per file.
    """
    try:
        decoded = _decode_plain_jpeg(os.fspath(path))
    except (OSError, ValueError):
        decoded = None  # a missing or broken file: Pillow's decode below names the problem
    return decoded if decoded is not None else np.array(open_image(path, label))


def _simplejpeg() -> ModuleType | None:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _decode_plain_jpeg(path: str) -> np.ndarray | None:
    """An RGB or grayscale JPEG without EXIF rotation, decoded by simplejpeg into (H, W, 3) or
    (H, W) uint8; None for any other file (or without simplejpeg): Pillow decodes those."""
    simplejpeg = _simplejpeg()
    if simplejpeg is None:
        return None
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":  # not a JPEG: leave it to Pillow without reading it all
            return None
        f.seek(0)
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as img:  # parses the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                return None
    except _DECODE_ERRORS:
        return None  # Pillow's decode names the problem
    # Pillow's decode settings: accurate integer IDCT and fancy (smooth) chroma upsampling.
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB" if img.mode == "RGB" else "GRAY", fastdct=False, fastupsample=False, strict=True)
    return pixels[..., 0] if img.mode == "L" else pixels


# --------------------------------------------------------------------------- in-memory images
# What the image processor accepts besides files (PIL images, numpy arrays, torch tensors, in
# batches and lists), decoded by the same policy: 8-bit RGB or L for Pillow to resize, or a
# float array when nothing is resized (to keep float precision).


def channel_axis(shape: tuple[int, ...], label: str, input_data_format: str | None) -> int:
    """Index (0 or 2) of the channel axis of a 3-D image."""
    if input_data_format is not None:
        axis = 0 if input_data_format == "channels_first" else 2
        if shape[axis] not in ALLOWED_CHANNELS:
            raise ValueError(
                f"{label}: image of shape {shape} has {shape[axis]} channels on its {input_data_format} axis; "
                "expected 1 (grayscale), 3 (RGB) or 4 (RGBA)"
            )
        return axis
    # Same preference as Hugging Face: channels-first wins when both ends could be channels.
    if shape[0] in ALLOWED_CHANNELS:
        return 0
    if shape[2] in ALLOWED_CHANNELS:
        return 2
    raise ValueError(
        f"{label}: cannot find the channel axis of an image of shape {shape}: expected 1 (grayscale), "
        f"3 (RGB) or 4 (RGBA) channels on the first or last axis, got {shape[0]} and {shape[2]}"
    )


class DecodedImage:
    """One decoded image: a PIL image (mode "RGB" or "L", or "RGBA" when four channels are kept;
    8-bit) or a float32 HWC array on the 0..255 scale (only when no resize is asked for, to keep
    float precision)."""

    __slots__ = ("pil", "array", "prescaled")

    def __init__(self, pil: Image.Image | None = None, array: np.ndarray | None = None, prescaled: bool = False):
        self.pil = pil
        self.array = array
        # True when the input was float in [0, 1]: the user already rescaled it, so it is
        # divided by 255 exactly once whatever do_rescale says (no double rescale).
        self.prescaled = prescaled


def _channel_mismatch(label: str, found: int, channels: int) -> ValueError:
    return ValueError(f"{label}: image has {found} channel(s) but image_mean/image_std have {channels} value(s); "
                      "give one mean/std value per image channel")


def _decode_pil(img: Image.Image, label: str, keep_float: bool, channels: int = 3) -> DecodedImage:
    """``channels``: 3 makes every image RGB (grayscale stays one plane, repeated at the end);
    1 and 4 keep grayscale and RGBA images as they are and refuse others."""
    mode = img.mode
    if channels == 4 and mode in ("RGBA", "RGBa", "PA"):
        return DecodedImage(pil=img if mode == "RGBA" else img.convert("RGBA"))
    if channels == 1 and (mode in ("L", "1", "LA", "La", "I", "F") or mode.startswith("I;16")):
        return _decode_pil(img, label, keep_float)  # one 8-bit plane (or float array) on the grayscale path
    if channels != 3:
        raise _channel_mismatch(label, len(img.getbands()), channels)
    if is_wide_mode(mode):
        # Through the array path (deit.images' value ranges), which keeps float precision when
        # nothing is resized and remembers that a [0, 1] float image is already rescaled.
        return _decode_array(np.asarray(img), label, None, keep_float, sixteen_bit=mode != "F")
    return DecodedImage(pil=to_8bit(img, label))


def _decode_array(a: np.ndarray, label: str, input_data_format: str | None, keep_float: bool,
                  sixteen_bit: bool = False, channels: int = 3) -> DecodedImage:
    if a.ndim == 3:
        axis = channel_axis(a.shape, label, input_data_format)
        if axis == 0:
            a = np.moveaxis(a, 0, -1)
        if channels != 3 and a.shape[-1] != channels:
            raise _channel_mismatch(label, a.shape[-1], channels)
        if a.shape[-1] == 4 and channels == 3:
            a = a[..., :3]  # RGBA -> RGB: drop alpha like PIL convert("RGB")
        elif a.shape[-1] == 1:
            a = a[..., 0]
    elif a.ndim != 2:
        raise ValueError(f"{label}: an image must be a 2-D (H, W) or 3-D (H, W, C) / (C, H, W) array, "
                         f"got shape {tuple(a.shape)}")
    elif channels not in (1, 3):
        raise _channel_mismatch(label, 1, channels)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{label}: image has an empty side (shape {tuple(a.shape)})")

    if a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * np.uint8(255)
    elif a.dtype == np.uint16 or sixteen_bit:
        u8 = int_to_uint8(a, label, sixteen_bit=True)
    elif np.issubdtype(a.dtype, np.integer):
        u8 = int_to_uint8(a, label, sixteen_bit=False)
    elif np.issubdtype(a.dtype, np.floating):
        f255, prescaled = float_to_255(a, label)
        if keep_float:
            return DecodedImage(array=f255 if f255.ndim == 3 else f255[..., None], prescaled=prescaled)
        # Pillow resizes 8-bit data; round (not truncate) to the nearest level.
        u8 = np.rint(f255).astype(np.uint8)
        return DecodedImage(pil=Image.fromarray(np.ascontiguousarray(u8)), prescaled=prescaled)
    else:
        raise TypeError(f"{label}: unsupported pixel dtype {a.dtype}")
    return DecodedImage(pil=Image.fromarray(np.ascontiguousarray(u8)))


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


def decode_image(item: Any, label: str, input_data_format: str | None, keep_float: bool, channels: int = 3) -> DecodedImage:
    """One image of any accepted kind (a file path, PIL image, numpy array or torch tensor) as
    ``channels`` channels: 3 makes every image RGB (alpha dropped; grayscale stays one plane, for
    the caller to repeat), 1 and 4 keep grayscale and RGBA images and refuse others.
    ``keep_float``: float pixels stay a float array (nothing will be resized)."""
    if isinstance(item, Image.Image):
        return _decode_pil(item, label, keep_float, channels)
    if _is_torch_tensor(item):
        item = _tensor_to_numpy(item)
    if isinstance(item, np.ndarray):
        return _decode_array(item, label, input_data_format, keep_float, channels=channels)
    if isinstance(item, (str, os.PathLike)):
        return _decode_pil(read_image(item, label), label, keep_float, channels)
    raise TypeError(f"{label}: expected a PIL image, numpy array, torch tensor or file path, "
                    f"got {type(item).__name__}")


def flatten_images(images: Any) -> list[tuple[str, Any]]:
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


# --------------------------------------------------------------------------- pixel value ranges


def int_to_uint8(a: np.ndarray, label: str, sixteen_bit: bool) -> np.ndarray:
    """Integer pixels -> uint8; 16-bit data (``sixteen_bit``, or values above 255) is mapped
    0..65535 -> 0..255 (v / 257, rounded)."""
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


def float_to_255(a: np.ndarray, label: str) -> tuple[np.ndarray, bool]:
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


# --------------------------------------------------------------------------- the evaluation resize rule


def eval_resize_size(crop_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """The side to resize an image to before an evaluation centre crop of ``crop_size`` that keeps
    ``crop_pct`` of it: ``int(crop_size / crop_pct)`` (224 at 0.875 -> 256; 384 at 0.875 -> 438).

    The DeiT authors' formula (``size = int(args.input_size / args.eval_crop_ratio)`` in
    ``datasets.py`` of facebookresearch/deit), which timm's eval transform also uses
    (``math.floor(img_size / crop_pct)``).
    """
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size <= 0:
        raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return int(crop_size / crop_pct)


def eval_sizes(image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> tuple[dict[str, int], dict[str, int]]:
    """The evaluation resize rule (module docstring) as the processor's ``size`` and
    ``crop_size``: the shorter side to :func:`eval_resize_size`, then the centre square."""
    return {"shortest_edge": eval_resize_size(image_size, crop_pct)}, {"height": image_size, "width": image_size}
