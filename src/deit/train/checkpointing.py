"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.pt``, replaced atomically (temp file + rename), so a crash while saving
leaves the previous checkpoint intact. It holds plain tensors and Python values only and is
read back with ``torch.load(weights_only=True)``. The model alone is also written in the
Hugging Face layout (``best/``, ``last/``) for ``deit predict``/``deit eval``/``from_pretrained``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
# Bumped when the layout of the file changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """The random state of Python, NumPy and torch (CPU and every visible GPU)."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, not a pickle traceback
        raise ValueError(f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a deit training checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def resolve_resume_path(resume: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """``--resume`` with no value (``"auto"``) means the output folder's own checkpoint."""
    path = Path(output_dir) / CHECKPOINT_NAME if str(resume) == "auto" else Path(resume)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_hf_model(model: torch.nn.Module, directory: str | os.PathLike, *, mean: Sequence[float], std: Sequence[float], crop_pct: float) -> None:
    """``save_pretrained`` plus the ``preprocessor_config.json`` of the eval transform it was validated with."""
    from ..processing import DeiTImageProcessor, eval_resize_size

    model.save_pretrained(directory)
    size = model.config.image_size
    processor = DeiTImageProcessor(size={"shortest_edge": eval_resize_size(size, crop_pct)}, crop_size=size, image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(directory)
