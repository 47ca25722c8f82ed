"""Real photographs available offline, and sets of JPEG files made from them.

The benchmarks need natural images (JPEG decode cost and classifier behaviour both depend on
content), and no machine here downloads any. matplotlib, a dependency, ships a portrait
(``grace_hopper.jpg``); scikit-learn, when installed, ships two more (``china.jpg``,
``flower.jpg``). Random crops, flips, colour changes and rescaling turn these into as many
distinct photographs of typical ImageNet sizes as a benchmark needs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ..images import open_rgb

__all__ = ["photo_sources", "photo_variants", "write_jpeg_set"]

# (package, path inside the package) of photographs that ship with Python packages.
_SHIPPED_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
)


def photo_sources() -> list[Path]:
    """Paths of the shipped photographs that are installed here (at least matplotlib's)."""
    found = []
    for package, relative in _SHIPPED_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if path.is_file():
            found.append(path)
    if not found:
        raise FileNotFoundError("no shipped photograph found (matplotlib's sample_data/grace_hopper.jpg is missing)")
    return found


def photo_variants(count: int, seed: int = 0, long_side: tuple[int, int] = (320, 640)) -> list[Image.Image]:
    """``count`` RGB photographs: random crops (30-100% of the area, aspect 3:4 to 4:3) of the
    shipped photos, flipped at random, with brightness/contrast/saturation changed by up to 30%,
    resized so the long side falls in ``long_side``."""
    rng = np.random.default_rng(seed)
    sources = [open_rgb(p) for p in photo_sources()]
    variants = []
    for i in range(count):
        src = sources[i % len(sources)]
        area = src.width * src.height * rng.uniform(0.3, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(src.width, round(np.sqrt(area * aspect))))
        h = int(min(src.height, round(np.sqrt(area / aspect))))
        left = int(rng.integers(0, src.width - w + 1))
        top = int(rng.integers(0, src.height - h + 1))
        img = src.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(float(rng.uniform(0.7, 1.3)))
        target = int(rng.integers(long_side[0], long_side[1] + 1))
        scale = target / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
        variants.append(img)
    return variants


def write_jpeg_set(folder: str | os.PathLike, count: int, seed: int = 0, quality: int = 90,
                   long_side: tuple[int, int] = (320, 640)) -> list[Path]:
    """Write ``count`` photo variants as JPEG files into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(photo_variants(count, seed=seed, long_side=long_side)):
        path = folder / f"photo_{i:04d}.jpg"
        img.save(path, quality=quality)
        paths.append(path)
    return paths
