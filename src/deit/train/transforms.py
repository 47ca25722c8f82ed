"""The DeiT recipe's image transforms (torchvision v2) and its batch-level mixup / cutmix.

Training: random resized crop + horizontal flip, RandAugment (``rand-m9-mstd0.5-inc1``) or, when
RandAugment is off, colour jitter, then to a float tensor, normalisation and random erasing of
normal noise. Evaluation: the image processor with the one evaluation resize rule of
:mod:`deit.images` (shorter side to ``image_size / crop_pct``, centre crop ``image_size``), so a
validation image gets the pixel values that ``deit predict``, ``deit eval`` and ``deit attention``
give it.

RandAugment is torchvision's, given timm's magnitude scale (0..10, ``m9`` = 90 % of each op's
range) and timm's magnitude noise (``mstd``: a magnitude drawn per image from N(m, mstd), clipped
to [0, 10]). torchvision's op set is the "increasing" one (``inc1``: a larger magnitude is always
a stronger change); it has Identity where timm has Invert and SolarizeAdd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..processing import DEFAULT_CROP_PCT, DeiTImageProcessor

__all__ = [
    "build_train_transform", "build_eval_transform", "ProcessorTransform", "parse_rand_augment",
    "RandAugment", "MixupCutmix", "smoothed_one_hot",
]

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}
MAX_MAGNITUDE = 10.0
# Magnitudes are continuous in timm; 101 bins over [0, 10] resolve them to 0.1.
_MAGNITUDE_BINS = 101


def _interpolation(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {name!r}") from None


def parse_rand_augment(spec: str) -> dict[str, float]:
    """``"rand-m9-mstd0.5-inc1"`` -> ``{"magnitude": 9.0, "magnitude_std": 0.5, "num_ops": 2}``.

    Keys: ``m`` magnitude (0..10), ``n`` ops per image (default 2), ``mstd`` magnitude noise
    (default 0), ``inc`` (only ``inc1``: torchvision's ops are the increasing kind).
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand-', got {spec!r}")
    params = {"magnitude": 9.0, "magnitude_std": 0.0, "num_ops": 2}
    for part in parts[1:]:
        key = next((k for k in ("mstd", "inc", "m", "n") if part.startswith(k)), None)
        try:
            value = float(part[len(key):]) if key else None
        except ValueError:
            value = None
        if value is None:
            raise ValueError(f"RandAugment spec {spec!r}: cannot read {part!r} (known: m<float>, n<int>, mstd<float>, inc1)")
        if key == "m":
            if not 0 <= value <= MAX_MAGNITUDE:
                raise ValueError(f"RandAugment magnitude must be within [0, 10], got {value}")
            params["magnitude"] = value
        elif key == "n":
            params["num_ops"] = int(value)
        elif key == "mstd":
            params["magnitude_std"] = value
        elif value != 1:
            raise ValueError(f"RandAugment spec {spec!r}: only inc1 (increasing-severity ops) is supported")
    return params


class RandAugment(v2.RandAugment):
    """torchvision's RandAugment on timm's magnitude scale, with per-image magnitude noise."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0, **kwargs) -> None:
        super().__init__(num_ops=num_ops, magnitude=self._bin(magnitude), num_magnitude_bins=_MAGNITUDE_BINS, **kwargs)
        self.mean_magnitude = magnitude
        self.magnitude_std = magnitude_std

    @staticmethod
    def _bin(magnitude: float) -> int:
        return int(round(min(max(magnitude, 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE * (_MAGNITUDE_BINS - 1)))

    def forward(self, *inputs):
        if self.magnitude_std > 0:
            # torch's generator (not Python's) so a seeded run reproduces the draws.
            self.magnitude = self._bin(float(torch.empty(()).normal_(self.mean_magnitude, self.magnitude_std)))
        return super().forward(*inputs)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(
    image_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    rand_augment: str | None = "rand-m9-mstd0.5-inc1",
    interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    color_jitter: float | None = 0.3,
) -> v2.Compose:
    """PIL image -> normalised float tensor (3, image_size, image_size), augmented as in DeiT.

    ``re_mode``: "pixel" erases with per-pixel normal noise (the recipe), "const" with zeros.
    ``color_jitter`` applies only when ``rand_augment`` is None, as in the recipe.
    """
    if re_mode not in ("pixel", "const"):
        raise ValueError(f"re_mode must be 'pixel' or 'const', got {re_mode!r}")
    steps: list[Callable] = [v2.RandomResizedCrop(image_size, scale=scale, interpolation=_interpolation(interpolation), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if rand_augment:
        params = parse_rand_augment(rand_augment)
        fill = [round(255 * m) for m in mean]  # fill uncovered pixels with the mean colour, not black
        steps.append(RandAugment(interpolation=InterpolationMode.BICUBIC, fill=fill, **params))
    elif color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    steps += _to_normalized_tensor(mean, std)
    if re_prob > 0:
        steps.append(v2.RandomErasing(p=re_prob, value="random" if re_mode == "pixel" else 0.0))
    return v2.Compose(steps)


class ProcessorTransform:
    """A per-image transform made of an image processor: image -> (C, H, W) float tensor
    (picklable, for DataLoader workers)."""

    def __init__(self, processor: DeiTImageProcessor) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


def build_eval_transform(
    image_size: int, *, mean: Sequence[float], std: Sequence[float], crop_pct: float = DEFAULT_CROP_PCT, interpolation: str = "bicubic"
) -> ProcessorTransform:
    """The authors' evaluation transform, the one rule of :mod:`deit.images`: shorter side to
    ``image_size / crop_pct``, centre crop; through the image processor (Pillow's resize on 8-bit
    pixels, the processor's crop offsets and normalisation), as every other path."""
    _interpolation(interpolation)  # the same names as the training transform
    processor = DeiTImageProcessor.for_eval(image_size, crop_pct, resample=interpolation, image_mean=list(mean), image_std=list(std))
    return ProcessorTransform(processor)


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot rows with ``smoothing`` spread evenly: off = s/C, on = 1 - s + s/C (rows sum to 1).

    A negative label (an unlabelled image, ``deit.train.partial_labels.UNLABELLED``) gives a row of
    zeros: mixed into another image's row by mixup/cutmix, it leaves a target that sums to the
    labelled share of the mix, which is the weight the cross-entropy then gives it.
    """
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    targets.scatter_(1, labels.long().clamp(min=0).view(-1, 1), 1.0 - smoothing + off)
    return targets * (labels >= 0).unsqueeze(1)


class MixupCutmix:
    """Batch-level mixup / cutmix with label smoothing, as in the DeiT recipe.

    Called on ``(images, labels)`` (labels: class indices), returns ``(mixed images, soft
    targets)``. With probability ``prob`` a batch is mixed with its reverse (sample i with sample
    B-1-i): by cutmix with probability ``switch_prob`` when both alphas are positive, else by the
    one that is. Mixup blends by lam ~ Beta(mixup_alpha); cutmix pastes a box covering about
    1 - lam of the image, lam ~ Beta(cutmix_alpha), and then sets lam to the exact uncovered
    share. Targets are ``lam * smooth(y) + (1 - lam) * smooth(reversed y)``.

    With both alphas 0 (``enabled`` is False) images pass through and the targets are just the
    smoothed one-hot labels. Random draws use torch's global generator, so a seeded run repeats.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    @staticmethod
    def _beta(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def _draw(self) -> tuple[float, bool]:
        """(lam, use_cutmix); lam = 1 means the batch is left alone."""
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        return self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha), use_cutmix

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """A box of about (1 - lam) of the area, centred uniformly at random, clipped to the image."""
        ratio = (1.0 - lam) ** 0.5
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return top, bottom, left, right

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.ndim != 1:
            raise ValueError(f"MixupCutmix expects class indices (shape (B,)), got labels of shape {tuple(labels.shape)}")
        lam, use_cutmix = self._draw()
        targets = smoothed_one_hot(labels, self.num_classes, self.label_smoothing)
        if lam == 1.0:
            return images, targets
        reversed_images = images.flip(0)
        if use_cutmix:
            top, bottom, left, right = self.cutmix_box(images.shape[-2], images.shape[-1], lam)
            images = images.clone()
            images[..., top:bottom, left:right] = reversed_images[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
        else:
            images = images * lam + reversed_images * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)

