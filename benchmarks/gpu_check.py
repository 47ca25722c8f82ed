"""The GPU check: one call of the device tool, under 8 minutes, no network, from a checkout.

    PYTHONPATH=src python benchmarks/gpu_check.py              # on a GPU machine; the table goes to $OUT
    PYTHONPATH=src python benchmarks/gpu_check.py --dry-run    # anywhere: tiny models on the CPU, seconds

What it times, all candidates of a table row group in one interleaved run
(:func:`deit.bench.timing.interleaved`, which synchronises the device), images/s of the best round
and the median round's ratio:

* inference, DeiT-S and DeiT-B, bf16 and fp16 (the model cast), batch 1, 64 and 256: ours eager,
  timm eager, transformers eager and SDPA; at batch 256 also each under ``torch.compile``
  (compiling every batch size would not fit the time);
* a training step (forward, backward, fused AdamW) of DeiT-S at batch 128 under bf16 autocast
  over float32 weights, ours against timm, each eager and compiled; both train the distilled
  classifier on its two heads.

A time budget (``--budget-s``, default 420 s) guards the 8 minutes: once spent, the remaining
compiled candidates are skipped and the table says so. ``--dry-run`` runs the same code on the
CPU with tiny models (hidden 64, 2 layers, 32 px) at batch 2, and compiles with the "eager"
backend (through dynamo, no code generation): what tests/test_gpu_check.py runs. The distillation
step with a ResNet-50 teacher (online against the teacher-logit cache) is not here yet: the
cache is another issue's work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, or PYTHONPATH=src)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

from deit.bench.timing import interleaved, machine_summary
from deit.bench.training import _our_loss, _timm_loss, train_step
from deit.config import DeiTConfig
from deit.atomic import atomic_write_text
from deit.modeling import DeiTForImageClassificationWithTeacher

# The tiny shape of the dry run (and its timm twin's arguments).
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8, num_labels=10)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Budget:
    """Seconds left for optional (compiled) candidates."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.deadline


def config_for(size: str, dry_run: bool) -> DeiTConfig:
    return DeiTConfig(**TINY) if dry_run else DeiTConfig.from_preset(f"deit-{size}-distilled-patch16-224")


def timm_model(size: str, config: DeiTConfig, dry_run: bool) -> torch.nn.Module:
    import timm

    extra = {}
    if dry_run:
        extra = dict(img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
                     depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
                     mlp_ratio=config.intermediate_size / config.hidden_size, num_classes=config.num_labels)
    return timm.create_model(f"deit_{size}_distilled_patch16_224", pretrained=False, **extra)


def transformers_model(ours: torch.nn.Module, attention: str) -> torch.nn.Module:
    """The reference class loaded from our files, as a user loads it."""
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        return transformers.DeiTForImageClassificationWithTeacher.from_pretrained(folder, attn_implementation=attention)


def logits_call(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            out = model(x)
            return out if isinstance(out, torch.Tensor) else out.logits

    return call


def compiled(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    return torch.compile(model, backend=backend, dynamic=False)


def warm(call: Callable[[], object]) -> tuple[Callable[[], object], float]:
    """``call`` after two untimed calls (compilation happens in the first); the seconds they took."""
    start = time.perf_counter()
    call()
    call()
    return call, time.perf_counter() - start


def inference_rows(args: argparse.Namespace, device: torch.device, budget: Budget, log: Callable[[str], None]) -> list[dict]:
    rows = []
    backend = "eager" if args.dry_run else "inductor"
    for size in args.sizes:
        config = config_for(size, args.dry_run)
        torch.manual_seed(0)
        reference = DeiTForImageClassificationWithTeacher(config).eval()
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            models = {"ours": reference.to(device, dtype),
                      "timm": timm_model(size, config, args.dry_run).eval().to(device, dtype),
                      "transformers eager": transformers_model(reference.float().cpu(), "eager").eval().to(device, dtype),
                      "transformers sdpa": transformers_model(reference.float().cpu(), "sdpa").eval().to(device, dtype)}
            reference = reference.float().cpu()
            for batch_size in args.batch_sizes:
                x = torch.randn(batch_size, 3, config.image_size, config.image_size, device=device, dtype=dtype)
                candidates: dict[str, Callable[[], object]] = {name: logits_call(m, x) for name, m in models.items()}
                compile_seconds: dict[str, float] = {}
                skipped = []
                if batch_size == max(args.batch_sizes):
                    for name in ("ours", "timm", "transformers sdpa"):
                        if not budget.left():
                            skipped.append(name)
                            continue
                        candidates[f"{name} compiled"], compile_seconds[f"{name} compiled"] = warm(logits_call(compiled(models[name], backend), x))
                log(f"inference DeiT-{size} {dtype_name} batch {batch_size}: {len(candidates)} candidates x {args.rounds} rounds")
                timings = interleaved(candidates, rounds=args.rounds, device=device, min_seconds=args.turn_s)
                for name, timing in timings.items():
                    rows.append(dict(kind="inference", size=size, dtype=dtype_name, batch_size=batch_size, implementation=name,
                                     images_per_s=batch_size / timing.best, median_images_per_s=batch_size / timing.median,
                                     compile_s=compile_seconds.get(name)))
                rows += [dict(kind="inference", size=size, dtype=dtype_name, batch_size=batch_size, implementation=f"{name} compiled",
                              skipped="time budget spent") for name in skipped]
            del models
    return rows


def training_rows(args: argparse.Namespace, device: torch.device, budget: Budget, log: Callable[[str], None]) -> list[dict]:
    size, batch_size = args.sizes[0], args.train_batch_size
    config = config_for(size, args.dry_run)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=gen).to(device)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=gen).to(device)
    backend = "eager" if args.dry_run else "inductor"
    candidates: dict[str, Callable[[], object]] = {}
    compile_seconds: dict[str, float] = {}
    skipped = []
    for name in ("ours", "timm"):
        for compile_it in (False, True):
            torch.manual_seed(0)
            if name == "ours":
                model, loss = DeiTForImageClassificationWithTeacher(config).to(device), _our_loss
            else:
                model, loss = timm_model(size, config, args.dry_run).to(device), _timm_loss
                model.set_distilled_training(True)  # both heads' logits, as ours trains
            key = f"{name} compiled" if compile_it else name
            if compile_it:
                if not budget.left():
                    skipped.append(key)
                    continue
                step = train_step(compiled(model, backend), loss, x, labels, autocast=True)
                candidates[key], compile_seconds[key] = warm(step)
            else:
                candidates[key] = train_step(model, loss, x, labels, autocast=True)
    log(f"training DeiT-{size} batch {batch_size} bf16 autocast: {len(candidates)} candidates x {args.rounds} rounds")
    timings = interleaved(candidates, rounds=args.rounds, device=device)
    rows = [dict(kind="training", size=size, dtype="bf16 autocast", batch_size=batch_size, implementation=name,
                 images_per_s=batch_size / t.best, median_images_per_s=batch_size / t.median, compile_s=compile_seconds.get(name))
            for name, t in timings.items()]
    return rows + [dict(kind="training", size=size, dtype="bf16 autocast", batch_size=batch_size, implementation=name,
                        skipped="time budget spent") for name in skipped]


def format_rows(rows: list[dict]) -> str:
    """One Markdown table: per group (kind, model, dtype, batch), each candidate and its ratio to timm eager."""
    lines = ["| step | model | dtype | batch | implementation | images/s | vs timm eager (median) | compile s |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["size"], row["dtype"], row["batch_size"]), []).append(row)
    for (kind, size, dtype, batch), members in groups.items():
        timm = next((r for r in members if r["implementation"] == "timm" and "images_per_s" in r), None)
        for r in members:
            if "skipped" in r:
                lines.append(f"| {kind} | DeiT-{size[0].upper()} | {dtype} | {batch} | {r['implementation']} | skipped: {r['skipped']} |  |  |")
                continue
            ratio = (f"{r['images_per_s'] / timm['images_per_s']:.2f}x ({r['median_images_per_s'] / timm['median_images_per_s']:.2f}x)"
                     if timm else "")
            compile_text = f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else ""
            lines.append(f"| {kind} | DeiT-{size[0].upper()} | {dtype} | {batch} | {r['implementation']} | {r['images_per_s']:.1f} | {ratio} | {compile_text} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, batch 2 (seconds): checks the script")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.md and gpu_check.json (default $OUT)")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds after which compiled candidates are skipped (default 420)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 1 in a dry run)")
    args = p.parse_args(argv)
    args.sizes = ["tiny"] if args.dry_run else ["small", "base"]
    args.dtypes = ["bf16", "fp16"]
    args.batch_sizes = [2] if args.dry_run else [1, 64, 256]
    args.train_batch_size = 2 if args.dry_run else 128
    args.rounds = args.rounds or (1 if args.dry_run else 5)
    args.turn_s = 0.0 if args.dry_run else 0.2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        print("gpu_check: no CUDA device here; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    budget = Budget(args.budget_s)

    def log(message: str) -> None:
        print(f"[gpu_check {time.monotonic() - start:5.0f} s] {message}", file=sys.stderr, flush=True)

    rows = inference_rows(args, device, budget, log) + training_rows(args, device, budget, log)
    text = (f"Machine: {machine_summary(device)}; {time.monotonic() - start:.0f} s in all"
            f"{' (dry run: tiny models on the CPU, numbers meaningless)' if args.dry_run else ''}\n\n{format_rows(rows)}\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gpu_check.md", text)
    atomic_write_text(out / "gpu_check.json", json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
