"""Inference images/s of the Keras models (TensorFlow and JAX backends) against the reference's TF
class (transformers 4.55.4) and our PyTorch class: DeiT-S distilled with teacher, float32, one
batch size, the same random weights for all, in one run.

Each implementation runs in its own process (the Keras backend is fixed at the first import, and
the reference needs Keras 2 and an older transformers: ``--reference-python``, by default
``.venv-ref/bin/python`` as ``make venv-ref`` builds it). Every process times ``--rounds`` rounds of
``--iters`` forward passes after a warm-up (which includes any compilation) and checks its logits
against PyTorch's on the same batch.

    python benchmarks/keras_inference.py --rounds 3 --iters 3 --output results/keras_inference.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PRESET = "deit-small-distilled-patch16-224"

# name -> (interpreter: "main" or "reference", Keras backend or None, description)
IMPLEMENTATIONS = {
    "pytorch": ("main", None, "ours, PyTorch (eager, sdpa)"),
    "pytorch-optimize": ("main", None, "ours, PyTorch (deit.optimize)"),
    "keras-tf": ("main", "tensorflow", "ours, Keras on TensorFlow (eager)"),
    "keras-tf-function": ("main", "tensorflow", "ours, Keras on TensorFlow (tf.function)"),
    "keras-tf-xla": ("main", "tensorflow", "ours, Keras on TensorFlow (tf.function, jit_compile=True)"),
    "keras-jax": ("main", "jax", "ours, Keras on JAX (jax.jit)"),
    "reference-tf": ("reference", "tensorflow", "transformers 4.55.4 TFDeiT (tf.function)"),
    "reference-tf-xla": ("reference", "tensorflow", "transformers 4.55.4 TFDeiT (tf.function, jit_compile=True)"),
}


# ------------------------------------------------------------------------------ workers
def _forward_fn(name: str, checkpoint: str, threads: int):
    """A function batch -> logits (numpy) for implementation ``name``."""
    import numpy as np

    if name.startswith("pytorch"):
        import torch

        import deit

        torch.set_num_threads(threads)
        model = deit.DeiTForImageClassificationWithTeacher.from_pretrained(checkpoint)
        if name == "pytorch-optimize":
            model = deit.optimize(model)

        def forward(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).logits.float().numpy()

        return forward

    import deit.keras as dk  # before TensorFlow: see deit.tensorflow_import

    if name != "keras-jax":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)  # before TensorFlow runs anything
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if name.startswith("reference"):
        import transformers

        model = transformers.TFDeiTForImageClassificationWithTeacher.from_pretrained(checkpoint, from_pt=True)
    else:
        model = dk.TFDeiTForImageClassificationWithTeacher.from_pretrained(checkpoint)
    if name == "keras-jax":
        import jax

        @jax.jit
        def logits(trainable, non_trainable, batch):
            outputs, _ = model.stateless_call(trainable, non_trainable, batch)
            return outputs.logits

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return lambda batch: np.asarray(logits(trainable, non_trainable, batch))

    if name == "keras-tf":
        return lambda batch: np.asarray(model(batch).logits)
    compiled = tf.function(lambda batch: model(batch, training=False).logits, jit_compile=name.endswith("xla"))
    return lambda batch: compiled(tf.constant(batch)).numpy()


def worker(args: argparse.Namespace) -> None:
    import numpy as np

    forward = _forward_fn(args.worker, args.checkpoint, args.threads)
    batch = np.load(args.batch_file)
    start = time.perf_counter()
    logits = forward(batch)  # warm-up, compilation included
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.iters):
            forward(batch)
        rates.append(args.iters * len(batch) / (time.perf_counter() - start))
    np.save(args.logits_file, logits)
    print("RESULT " + json.dumps({"rates": rates, "warmup_s": warmup_s}))


# ------------------------------------------------------------------------- orchestrator
def _run_worker(name: str, python: str, backend: str | None, args: argparse.Namespace, checkpoint: Path, batch_file: Path,
                logits_file: Path) -> dict | str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "TF_CPP_MIN_LOG_LEVEL": "2",
           "OMP_NUM_THREADS": str(args.threads)}
    if name.startswith("reference"):
        env["TF_USE_LEGACY_KERAS"] = "1"  # the reference TF classes need Keras 2 (tf-keras)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    command = [python, __file__, "--worker", name, "--checkpoint", str(checkpoint), "--batch-file", str(batch_file),
               "--logits-file", str(logits_file), "--rounds", str(args.rounds), "--iters", str(args.iters), "--threads", str(args.threads)]
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        return f"failed (exit {run.returncode}): {(run.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3, help="forward passes per round")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", nargs="*", choices=sorted(IMPLEMENTATIONS), help="run these implementations only")
    parser.add_argument("--reference-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    for hidden in ("--worker", "--checkpoint", "--batch-file", "--logits-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(SRC))
        worker(args)
        return 0

    sys.path.insert(0, str(SRC))
    import numpy as np
    import torch

    import deit
    from deit.bench.timing import machine_summary

    torch.manual_seed(0)
    model = deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig.from_preset(PRESET))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder / "checkpoint")
        batch_file = folder / "batch.npy"
        np.save(batch_file, np.random.default_rng(0).standard_normal((args.batch_size, 3, 224, 224)).astype(np.float32))
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(np.load(batch_file))).logits.numpy()
        rows = []
        for name in args.only or IMPLEMENTATIONS:
            interpreter, backend, description = IMPLEMENTATIONS[name]
            python = sys.executable if interpreter == "main" else args.reference_python
            if not Path(python).is_file():
                rows.append((description, f"skipped: no reference interpreter at {python} (make venv-ref)", None))
                continue
            logits_file = folder / f"{name}.npy"
            result = _run_worker(name, python, backend, args, folder / "checkpoint", batch_file, logits_file)
            diff = float(np.abs(np.load(logits_file) - expected).max()) if isinstance(result, dict) else None
            rows.append((description, result, diff))
            print(f"{description}: {result}", file=sys.stderr)

    baseline = next((statistics.median(r["rates"]) for d, r, _ in rows if isinstance(r, dict) and d == IMPLEMENTATIONS["pytorch"][2]), None)
    lines = [
        f"DeiT-S distilled (with teacher), batch {args.batch_size}, float32, {args.threads} threads; "
        f"median of {args.rounds} rounds of {args.iters} passes. {machine_summary()}",
        "",
        "| implementation | images/s (median) | rounds | vs ours PyTorch (eager) | warm-up incl. compile (s) | logits vs PyTorch (max abs) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for description, result, diff in rows:
        if not isinstance(result, dict):
            lines.append(f"| {description} | {result} | | | | |")
            continue
        median = statistics.median(result["rates"])
        ratio = f"{median / baseline:.2f}x" if baseline else ""
        rounds = ", ".join(f"{r:.1f}" for r in result["rates"])
        lines.append(f"| {description} | {median:.1f} | {rounds} | {ratio} | {result['warmup_s']:.1f} | {diff:.1e} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output is not None:
        from deit.atomic import atomic_write_text

        atomic_write_text(args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
