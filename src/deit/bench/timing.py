"""Timing helpers shared by the benchmarks: interleaved repetitions, device sync, the machine.

Other work on the machine slows whatever runs at the same moment, so candidates are never timed
one after another: each round runs every candidate once, in a rotating order, and a candidate's
score is its fastest round (noise only ever adds time). Where the OS reports CPU use (Linux),
rounds during which other processes used more than a few percent of the CPUs are set aside and
the best of the quiet rounds counts; the number of quiet rounds is reported with the result.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..probes import cpu_model_name as cpu_name  # one reading of /proc/cpuinfo; benchmarks/ import it from here

__all__ = ["Timing", "interleaved", "synchronize", "machine_summary", "cpu_name", "load_average", "wait_for_quiet", "set_threads"]


# Other processes' share of all CPUs above which a round counts as disturbed.
BUSY_SHARE = 0.05
# The pause before each candidate's turn: the worker threads of the candidate before it (ONNX
# Runtime's, OpenMP's) spin for a while after its last call, and on a machine of few cores they
# take the next candidate's cores. Measured on a 2-core AMD Zen 3: ONNX Runtime's DeiT-S at batch 1
# ran 14.0 images/s right after other sessions' turns, 16.4 after this pause.
SETTLE_SECONDS = 0.05


@dataclass
class Timing:
    """Seconds per call of one candidate over the rounds of an interleaved run, and which rounds
    were quiet (no other process used the CPUs meanwhile)."""

    seconds: list[float]
    quiet: list[bool]

    @property
    def usable(self) -> list[float]:
        quiet = [s for s, q in zip(self.seconds, self.quiet) if q]
        return quiet or self.seconds

    @property
    def best(self) -> float:
        return min(self.usable)

    @property
    def median(self) -> float:
        return statistics.median(self.usable)

    @property
    def quiet_rounds(self) -> int:
        return sum(self.quiet)


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by all processes, by this one and its finished children), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest time is inside user)
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def _others_share(before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float) -> float:
    """Share of all CPUs that other processes used between two readings (0 when unknown)."""
    if before is None or after is None or wall <= 0:
        return 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(others, 0.0) / (wall * (os.cpu_count() or 1))


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so the clock measures it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: Mapping[str, Callable[[], object]], rounds: int = 5, warmup: int = 1, device: torch.device | str = "cpu",
    min_seconds: float = 0.0,
) -> dict[str, Timing]:
    """Time each candidate ``rounds`` times, one turn of each per round, rotating the order.

    A turn is one call, or, with ``min_seconds``, as many back-to-back calls as fill that time
    (counted from the last warm-up call), and the turn's mean per call counts: a single call of
    a few milliseconds (batch 1) measures mostly the noise of that moment."""
    names = list(candidates)
    calls = dict.fromkeys(names, 1)
    for name in names:
        for _ in range(warmup):
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            once = time.perf_counter() - start
            calls[name] = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    timings = {name: Timing([], []) for name in names}
    for r in range(rounds):
        shift = r % len(names)
        round_start, cpu_before = time.perf_counter(), _cpu_seconds()
        for name in names[shift:] + names[:shift]:
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            for _ in range(calls[name]):
                candidates[name]()
            synchronize(device)
            timings[name].seconds.append((time.perf_counter() - start) / calls[name])
        # Judged per round: /proc/stat counts in 10 ms ticks, too coarse for one short call.
        quiet = _others_share(cpu_before, _cpu_seconds(), time.perf_counter() - round_start) <= BUSY_SHARE
        for timing in timings.values():
            timing.quiet.append(quiet)
    return timings


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


def machine_summary(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware and software the numbers come from."""
    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        bf16 = "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no bf16"
        hardware = f"{cpu_name()}, {os.cpu_count()} logical cores, {capability} ({bf16})"
    load = load_average()
    load_text = f", 1-min load {load:.2f}" if load is not None else ""
    return f"{hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads{load_text}"
