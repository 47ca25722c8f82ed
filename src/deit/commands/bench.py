"""``deit bench {inference,loading,training,agreement}``: the benchmarks of BENCHMARKS.md."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..bench.report import BENCHMARKS, add_benchmark_arguments

    p = subparsers.add_parser("bench", help="time ours against transformers/timm (inference, image loading, training)")
    kinds = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    kinds.required = True
    for name, (help_text, _, _) in BENCHMARKS.items():
        sub = kinds.add_parser(name, help=help_text)
        add_benchmark_arguments(sub, name)
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.report import run_benchmark

    return run_benchmark(args.benchmark, args)
