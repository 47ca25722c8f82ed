"""What the mnist5k benchmarks over seeds share: mean ± std, and the markdown file with the command."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from deit.bench.timing import cpu_name
from deit.atomic import atomic_write_text


def add_run_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every seed benchmark has: seeds, where the runs go, the markdown file, threads, loaders."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=out, help="where the runs are written")
    parser.add_argument("--markdown", help="also write the table and the command to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads (default 1, as deit demo)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers (default 1, as deit demo)")


def mean_std(values: list[float], digits: int = 2) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def write_report(path: str, title: str, table: str, elapsed_s: float, notes: str = "") -> None:
    """``# title``, the command that ran (this script with its arguments), the machine, the table."""
    command = " ".join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    machine = (f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} logical cores), {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}, Python {platform.python_version()}")
    text = f"# {title}\n\nCommand: `{command}`\n\nMachine: {machine}; wall time {elapsed_s / 60:.1f} min.\n\n{table}\n"
    atomic_write_text(Path(path), text + (f"\n{notes}\n" if notes else ""))
