"""The picture of a masked-image-modeling epoch: what the model saw and what it made of it.

One row per validation image, four columns: the input, the masked input (masked patches grey),
the reconstruction, and the input with the reconstruction pasted into the masked patches only
(what SimMIM's loss scores). Pixels are un-normalised with the run's mean and std.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..atomic import atomic_path

COLUMNS = ("input", "masked", "reconstruction", "pasted")
MIN_CELL = 96  # small images (28 px digits) are enlarged to at least this, nearest neighbour
GAP = 4
HEADER = 14


def pixel_mask(masks: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """(B, num_patches) patch masks -> (B, 1, H, W) float pixel masks."""
    grid = image_size // patch_size
    square = masks.reshape(-1, grid, grid).float()
    return square.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


@torch.no_grad()
def reconstruction_panels(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, mean: Sequence[float],
                          std: Sequence[float], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 4, C, H, W) images in [0, 1]: input, masked input, reconstruction, pasted."""
    was_training = model.training
    model.eval()
    try:
        reconstruction = model(images.to(device), bool_masked_pos=masks.to(device)).reconstruction.float().cpu()
    finally:
        model.train(was_training)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    scale = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = images.float() * scale + shift
    rebuilt = reconstruction * scale + shift
    masked = pixel_mask(masks, model.config.patch_size, images.shape[-1])
    grey = torch.full_like(pixels, 0.5)
    panels = torch.stack([pixels, pixels * (1 - masked) + grey * masked, rebuilt, pixels * (1 - masked) + rebuilt * masked], dim=1)
    return panels.clamp(0.0, 1.0)


def save_reconstructions(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, path: str | os.PathLike, *,
                         mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu", title: str = "") -> None:
    """Write the four columns for ``images`` as one PNG at ``path`` (atomically)."""
    panels = reconstruction_panels(model, images, masks, mean=mean, std=std, device=device)
    rows, columns, _, height, width = panels.shape
    zoom = max(1, -(-MIN_CELL // height))
    cell_h, cell_w = height * zoom, width * zoom
    header = HEADER * (2 if title else 1)
    sheet = Image.new("RGB", (columns * (cell_w + GAP) + GAP, header + rows * (cell_h + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((GAP, 1), title, fill="black")
    for c, name in enumerate(COLUMNS):
        draw.text((GAP + c * (cell_w + GAP), header - HEADER + 1), name, fill="black")
    for r in range(rows):
        for c in range(columns):
            array = (panels[r, c].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            array = array[:, :, 0] if array.shape[2] == 1 else array  # one-channel models
            cell = Image.fromarray(array).resize((cell_w, cell_h), Image.NEAREST)
            sheet.paste(cell, (GAP + c * (cell_w + GAP), header + GAP + r * (cell_h + GAP)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
