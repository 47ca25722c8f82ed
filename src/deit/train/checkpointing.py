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

from ..atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
# Settings of one invocation that a resumed run does not take over from the checkpoint.
PER_INVOCATION_SETTINGS = ("stop_after_steps", "overwrite")
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


def resumed_config(config_class: type[Any], given: dict[str, Any]) -> tuple[Any, str]:
    """The settings of a resumed run: those saved in its checkpoint, with ``given`` (the options
    set explicitly, ``resume`` among them) on top; and a line saying what came from where.

    The output folder is the checkpoint's own unless ``given`` names one. A missing checkpoint
    is a FileNotFoundError naming the path and how to point at the run.
    """
    output = given.get("output")
    resume = str(given["resume"])
    if output is None and resume == "auto":
        output = config_class().output
    path = resolve_resume_path(resume, output if output is not None else ".")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no training checkpoint to resume; name the run's folder with --output FOLDER --resume, "
            "or its checkpoint with --resume PATH"
        )
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in load_checkpoint(path)["config"].items()}
    defaults = config_class()
    for name in PER_INVOCATION_SETTINGS:  # they ruled the run that wrote the checkpoint, not this one
        saved[name] = getattr(defaults, name)
    settings = {**saved, **given, "resume": str(path), "output": output if output is not None else str(path.parent)}
    config = config_class.from_dict(settings)
    overridden = [f"{k} {_shown(v)} (the run's: {_shown(saved[k])})" for k, v in given.items()
                  if k not in ("resume", "output") and k in saved and saved[k] != v]
    note = f"resuming {path} with the run's settings (model {saved.get('model')}, data {saved.get('data')}, {saved.get('epochs')} epochs)"
    if overridden:
        note += "; from the command line: " + ", ".join(overridden)
    return config, note


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def save_hf_model(model: torch.nn.Module, directory: str | os.PathLike, *, mean: Sequence[float], std: Sequence[float], crop_pct: float) -> None:
    """``save_pretrained`` plus the ``preprocessor_config.json`` of the eval transform it was validated with."""
    from ..processing import DeiTImageProcessor

    model.save_pretrained(directory)
    # The one evaluation resize rule (deit.images), with the run's crop ratio and mean/std.
    processor = DeiTImageProcessor.for_eval(model.config.image_size, crop_pct, image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(directory)
