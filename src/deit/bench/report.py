"""The benchmarks as command-line programs: argument parsers and runners shared by ``deit bench``
and the scripts in ``benchmarks/``. Each runner prints (and optionally writes) a Markdown
report headed by the machine it ran on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from .timing import load_average, machine_summary, set_threads, wait_for_quiet

__all__ = ["BENCHMARKS", "add_benchmark_arguments", "run_benchmark"]


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best round counts (default 5)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                   help="first wait (up to 20 min) until the 1-minute load average is below LOAD")
    p.add_argument("--output", default=None, help="also write the Markdown report to this file")
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")


def _add_inference(p: argparse.ArgumentParser) -> None:
    from .inference import PEERS, SIZES

    p.add_argument("--sizes", type=_csv(str), default=list(SIZES), help="comma-separated: tiny,small,base")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 16], help="comma-separated (default 1,16)")
    p.add_argument("--dtypes", type=_csv(str), default=["fp32", "bf16"], help="comma-separated: fp32,bf16")
    p.add_argument("--peers", type=_csv(str), default=list(PEERS), help=f"comma-separated subset of {','.join(PEERS)}, or '' for ours alone")
    p.add_argument("--compile-peers", action="store_true", help="also time the peers under torch.compile (bf16)")
    p.add_argument("--compile-ours", action="store_true", help="also time ours under torch.compile")


def _run_inference(args: argparse.Namespace, device: torch.device) -> tuple[str, object]:
    from .inference import Cell, benchmark_cell, format_table

    rows = []
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            for dtype in args.dtypes:
                rows += benchmark_cell(
                    Cell(size, batch_size, dtype), device, rounds=args.rounds, peers=tuple(args.peers),
                    compile_peers=args.compile_peers and dtype == "bf16", compile_ours=args.compile_ours, log=_log,
                )
    raw = [dict(size=r.cell.size, batch_size=r.cell.batch_size, dtype=r.cell.dtype, implementation=r.name, setting=r.setting,
                images_per_s=r.images_per_s, compile_s=r.compile_s, **r.details) for r in rows]
    return format_table(rows, device), raw


def _add_ablation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="small", help="tiny, small or base (default small)")
    p.add_argument("--batch-sizes", type=_csv(int), default=[16], help="comma-separated (default 16)")
    p.add_argument("--dtypes", type=_csv(str), default=["fp32", "bf16"], help="comma-separated: fp32,bf16")
    p.add_argument("--compile", action="store_true", help="add a last step: torch.compile of the optimized model")


def _run_ablation(args: argparse.Namespace, device: torch.device) -> tuple[str, object]:
    from .inference import Cell, benchmark_ablation, format_ablation

    tables, raw = [], []
    for batch_size in args.batch_sizes:
        for dtype in args.dtypes:
            rows = benchmark_ablation(Cell(args.size, batch_size, dtype), device, args.rounds, args.compile, log=_log)
            tables.append(format_ablation(rows))
            raw += [dict(batch_size=batch_size, dtype=dtype, step=r.name, images_per_s=r.images_per_s, compile_s=r.compile_s) for r in rows]
    return "\n\n".join(tables), raw


def _add_loading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=256, help="JPEG files to write from the shipped photos (default 256)")
    p.add_argument("--folder", default=None, help="time these JPEG files instead")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    p.add_argument("--long-side", type=_csv(int), default=[320, 640], help="range of the photos' long side in pixels (default 320,640)")


def _run_loading(args: argparse.Namespace, device: torch.device) -> tuple[str, object]:
    from .loading import benchmark_loading, format_loading_table

    result = benchmark_loading(args.images, args.batch_size, args.workers, args.rounds, args.folder, tuple(args.long_side), log=_log)
    result.pop("outputs")
    return format_loading_table(result), result


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="tiny", help="tiny, small or base (default tiny)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtypes", type=_csv(str), default=["fp32", "bf16"], help="fp32 and/or bf16 (autocast)")


def _run_training(args: argparse.Namespace, device: torch.device) -> tuple[str, object]:
    from .training import benchmark_training, format_training_table

    results = benchmark_training(args.size, args.batch_size, tuple(args.dtypes), device, args.rounds, log=_log)
    return format_training_table(results, args.size, args.batch_size), results


def _add_agreement(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a trained checkpoint (default: a random-weight model of --size)")
    p.add_argument("--data", default="photos", help="'photos' (variants of the shipped photos) or a data set spec such as mnist5k")
    p.add_argument("--size", default="small", help="model size for the random-weight model (default small)")
    p.add_argument("--images", type=int, default=300, help="how many images (default 300; a data set's whole val split: 0)")


def _run_agreement(args: argparse.Namespace, device: torch.device) -> tuple[str, object]:
    from .agreement import format_agreement, top1_agreement

    result = top1_agreement(model_path=args.model, data=args.data, size=args.size, num_images=args.images, log=_log)
    return format_agreement(result), result


# name -> (help, add arguments, run)
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, torch.device], tuple[str, object]]]] = {
    "inference": ("images/s of ours vs transformers and timm, with the Linear-only bounds", _add_inference, _run_inference),
    "ablation": ("images/s of ours as each optimization is added", _add_ablation, _run_ablation),
    "loading": ("images/s from JPEG files to model input, ours vs transformers' processors", _add_loading, _run_loading),
    "training": ("training-step images/s (forward, backward, AdamW), ours with and without the fast kernels vs timm", _add_training, _run_training),
    "agreement": ("top-1 agreement of bf16 with float32 predictions", _add_agreement, _run_agreement),
}


def add_benchmark_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    _add_common(parser)
    BENCHMARKS[name][1](parser)


def run_benchmark(name: str, args: argparse.Namespace) -> int:
    if args.wait_quiet is not None:
        load = wait_for_quiet(args.wait_quiet)
        _log(f"1-minute load average {load}")
    previous_threads = torch.get_num_threads()
    set_threads(args.threads)
    try:
        device = torch.device(args.device)
        load_before = load_average()
        report, raw = BENCHMARKS[name][2](args, device)
        load_after = load_average()
        machine = machine_summary(device)
    finally:
        torch.set_num_threads(previous_threads)
    header = f"Machine: {machine}"
    if load_before is not None and load_after is not None:
        header += f" (1-min load {load_before:.2f} before, {load_after:.2f} after)"
    text = f"{header}\n\n{report}\n"
    print(text)
    if args.output:
        atomic_write_text(Path(args.output), text)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"machine": machine, "results": raw}, indent=2, default=str))
    return 0
