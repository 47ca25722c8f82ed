"""Seconds to load a checkpoint folder: ours against transformers, same folder, runs alternating.

A DeiT checkpoint (random weights, the Hugging Face layout, written once) is loaded with
``from_pretrained`` by our class and by transformers' class of the same name, ``--rounds`` times
each in turn; also the time to build the model from its config alone (the initial weight draw that
loading skips). Prints a table with the CPU and the ratio of the best rounds.

    .venv/bin/python benchmarks/from_pretrained.py --size base --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

import deit
from deit.bench.timing import cpu_name

SIZES = {"tiny": "deit-tiny-distilled-patch16-224", "small": "deit-small-distilled-patch16-224", "base": "deit-base-distilled-patch16-224"}


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    config = deit.DeiTConfig.from_preset(SIZES[args.size])
    with tempfile.TemporaryDirectory() as folder:
        deit.DeiTForImageClassificationWithTeacher(config).save_pretrained(folder)
        candidates = {
            "ours: from_pretrained": lambda: deit.DeiTForImageClassificationWithTeacher.from_pretrained(folder),
            "transformers: from_pretrained": lambda: transformers.DeiTForImageClassificationWithTeacher.from_pretrained(folder),
            "ours: built from the config (initial draw)": lambda: deit.DeiTForImageClassificationWithTeacher(config),
            "transformers: built from the config (initial draw)": lambda: transformers.DeiTForImageClassificationWithTeacher(
                transformers.DeiTConfig(**config.to_dict())),
        }
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, call in candidates.items():
                times[name].append(seconds(call))
    print(f"{cpu_name()} ({platform.machine()}), {args.threads} thread(s), torch {torch.__version__}, transformers "
          f"{transformers.__version__}; {SIZES[args.size]}, {args.rounds} rounds alternating\n")
    print("| what | best s | all rounds (s) | transformers / ours (best) |\n|---|---:|---|---:|")
    for name, values in times.items():
        peer = name.replace("ours", "transformers") if name.startswith("ours") else None
        ratio = f"{min(times[peer]) / min(values):.2f}x" if peer else ""
        print(f"| {name} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
