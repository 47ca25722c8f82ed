"""``--log tensorboard`` / ``--log wandb``: the run's metrics as scalars for the usual dashboards.

Per optimizer step, ``train/loss`` (the step's mean loss over all ranks) and ``train/lr``; per
epoch, every number of the epoch's ``metrics.jsonl`` line under ``epoch/`` (x axis: the optimizer
step at the epoch's end). TensorBoard's event files go to ``OUTPUT/tensorboard``, W&B's files to
``OUTPUT/wandb`` (offline with ``WANDB_MODE=offline``). Rank 0 writes; a resumed run drops the
events after its checkpoint's step, so that steps trained again are not logged twice.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any, Protocol

TENSORBOARD_FOLDER = "tensorboard"
WANDB_FOLDER = "wandb"
TRACKER_FOLDERS = (TENSORBOARD_FOLDER, WANDB_FOLDER)


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _tensorboard_without_tensorflow() -> None:
    """Have TensorBoard write its event files with its own TensorFlow stub. Where TensorFlow is
    installed TensorBoard imports all of it first (40 s on a busy 2-core machine), to write the
    same files; a ``tensorboard.compat.notf`` module is the switch of its TensorFlow-free build."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class TensorBoardTracker:
    def __init__(self, folder: Path, start_step: int) -> None:
        _tensorboard_without_tensorflow()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--log tensorboard needs the tensorboard package: pip install 'deit[tensorboard]'") from None
        # purge_step: a resumed run discards what the interrupted one logged after its checkpoint
        # (steps are logged under their count, so the checkpoint's own step start_step stays).
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, folder: Path, run_name: str, settings: dict[str, Any], resumed: bool) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("--log wandb needs the wandb package: pip install wandb (WANDB_MODE=offline logs without an account)") from None
        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(dir=str(folder), name=run_name, config=settings, resume="allow" if resumed else None)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one run (none on ranks other than 0, or without ``--log``)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    @classmethod
    def open(cls, kinds: tuple[str, ...], output_dir: Path, settings: dict[str, Any], *, start_step: int, is_main: bool) -> "Trackers":
        if not is_main:
            return cls([])
        trackers: list[Tracker] = []
        for kind in dict.fromkeys(kinds):
            if kind == "tensorboard":
                trackers.append(TensorBoardTracker(output_dir / TENSORBOARD_FOLDER, start_step))
            elif kind == "wandb":
                trackers.append(WandbTracker(output_dir / WANDB_FOLDER, output_dir.name, settings, resumed=start_step > 0))
            else:
                raise ValueError(f"--log {kind}: unknown (tensorboard or wandb)")
        return cls(trackers)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        self._log({"train/loss": loss, "train/lr": lr}, step)

    def log_epoch(self, entry: dict[str, Any]) -> None:
        """Every number of a ``metrics.jsonl`` entry, at the step the epoch ended on."""
        scalars = {f"epoch/{key}": float(value) for key, value in entry.items()
                   if key not in ("global_step",) and isinstance(value, (int, float)) and not isinstance(value, bool)}
        self._log(scalars, int(entry["global_step"]))

    def _log(self, scalars: dict[str, float], step: int) -> None:
        finite = {tag: value for tag, value in scalars.items() if math.isfinite(value)}
        for tracker in self.trackers:
            tracker.log(finite, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
