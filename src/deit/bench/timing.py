"""Timing helpers shared by the benchmarks: interleaved repetitions, device sync, the machine.

Other work on the machine slows whatever runs at the same moment, so candidates are never timed
one after another: each round runs every candidate once, in a rotating order, and a candidate's
score is its fastest round (noise only ever adds time). Ratios between candidates of one run
are then fair even on a busy machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timing", "interleaved", "synchronize", "machine_summary", "load_average", "wait_for_quiet", "set_threads"]


@dataclass
class Timing:
    """Seconds per call of one candidate over the rounds of an interleaved run."""

    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so the clock measures it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: Mapping[str, Callable[[], object]], rounds: int = 5, warmup: int = 1, device: torch.device | str = "cpu"
) -> dict[str, Timing]:
    """Time each candidate ``rounds`` times, one call of each per round, rotating the order."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in seconds.items()}


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def wait_for_quiet(threshold: float = 1.0, max_wait_s: float = 1200.0, poll_s: float = 60.0) -> float | None:
    """Poll the 1-minute load average until it drops below ``threshold`` (or time runs out);
    returns the last value read."""
    deadline = time.monotonic() + max_wait_s
    load = load_average()
    while load is not None and load >= threshold and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = load_average()
    return load


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: all cores); returns the number in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware and software the numbers come from."""
    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        bf16 = "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no bf16"
        hardware = f"{_cpu_name()}, {os.cpu_count()} logical cores, {capability} ({bf16})"
    load = load_average()
    load_text = f", 1-min load {load:.2f}" if load is not None else ""
    return f"{hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads{load_text}"
