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
from collections.abc import Callable
from types import ModuleType
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES", "DEFAULT_CROP_PCT", "ImageReadError", "ImageSource",
    "read_image", "open_image", "open_rgb", "open_image_array", "to_8bit", "to_rgb",
    "is_wide_mode", "int_to_uint8", "float_to_255", "eval_resize_size", "eval_sizes",
]

# The files a folder contributes (lowercase; compare with ``path.suffix.lower()``).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Share of the resized image that the evaluation centre crop keeps (224 of 256).
DEFAULT_CROP_PCT = 0.875

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]
# Given the stored (height, width) of a JPEG, the smallest (height, width) worth decoding.
DraftSize = Callable[[int, int], tuple[int, int]]

# What Pillow raises for a file it cannot decode (a plugin may raise any of these).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageReadError(ValueError):
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
            return ImageOps.exif_transpose(image)
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
