"""Shared start-up of the benchmark scripts: find the package, parse the arguments, run.

The measuring code lives in the package (``deit.bench``) so that ``deit bench`` runs the same
thing; these scripts are thin entry points that also work from a plain checkout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from deit import retain_freed_memory
from deit.bench.report import BENCHMARKS, add_benchmark_arguments, run_benchmark
from deit.bench.timing import Timing, interleaved, machine_summary, wait_for_quiet  # noqa: F401  (re-exported helpers)


def main(name: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=BENCHMARKS[name][0])
    add_benchmark_arguments(parser, name)
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the deit command does, for every candidate alike
    return run_benchmark(name, args)
