"""What ``deit predict`` on one image costs, end to end, with each ``--backend``: the whole process
(start, model load, :func:`deit.optimize`, one forward pass), timed from outside, rounds interleaved.

``auto`` is timed twice: with an empty engine-choice cache (it builds both engines, exports the
ONNX graph and times them) and with the choice its previous run kept (it builds only the chosen
engine). A random-weight DeiT of the given size, saved as a checkpoint folder, and the shipped
photograph; ``DEIT_CACHE_DIR`` points at a fresh folder per run, so nothing of the user's is read.

    .venv/bin/python benchmarks/predict_startup.py --size small --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

from deit.bench.inference import preset_config
from deit.bench.photos import photo_sources
from deit.bench.timing import machine_summary
from deit.modeling import DeiTForImageClassificationWithTeacher

DEIT = Path(sys.executable).with_name("deit")


def timed_predict(checkpoint: Path, photo: Path, backend: str, cache: Path, threads: int) -> float:
    environment = {**os.environ, "DEIT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([str(DEIT), "predict", "--model", str(checkpoint), "--backend", backend, "--threads", str(threads), str(photo)],
                   check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        DeiTForImageClassificationWithTeacher(preset_config(args.size)).save_pretrained(folder / "model")
        photo = folder / "photo.jpg"
        shutil.copyfile(photo_sources()[0], photo)
        seconds: dict[str, list[float]] = {"import deit": [], "torch": [], "onnxruntime": [], "auto, first run": [], "auto, choice kept": []}
        for r in range(args.rounds):
            cache = folder / f"cache{r}"
            for name in list(seconds)[r % len(seconds):] + list(seconds)[: r % len(seconds)]:
                if name == "import deit":
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-c", "import deit, deit.optimize"], check=True)
                    seconds[name].append(time.perf_counter() - start)
                elif name == "auto, choice kept":
                    if not (cache / "engine-choices.json").exists():
                        timed_predict(folder / "model", photo, "auto", cache, args.threads)  # (untimed: makes the choice)
                    seconds[name].append(timed_predict(folder / "model", photo, "auto", cache, args.threads))
                elif name == "auto, first run":
                    shutil.rmtree(folder / "fresh", ignore_errors=True)
                    seconds[name].append(timed_predict(folder / "model", photo, "auto", folder / "fresh", args.threads))
                else:
                    seconds[name].append(timed_predict(folder / "model", photo, name, cache, args.threads))
    print(f"{machine_summary()}; DeiT-{args.size}, one photograph, {args.rounds} interleaved rounds\n")
    print("| deit predict --backend | best (s) | median (s) |\n|---|---:|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
