"""Peak memory of one DeiT-S training step (batch 64, 224 px), with and without ``--grad-checkpointing``.

Method (the CPU; torch's allocations are invisible to tracemalloc): each setting runs in a fresh
process, which builds the model, AdamW and the batch, resets the kernel's resident-set high-water
mark (``echo 5 > /proc/self/clear_refs``), trains one step (forward, loss, backward, optimizer
step) and reads ``VmHWM`` from ``/proc/self/status``. The figure is that peak minus the resident
set just before the step: the memory the step itself took (activations, gradients, AdamW state).
Settings alternate over the rounds so that other load on the machine falls on both alike.

    python benchmarks/grad_checkpointing_memory.py [--rounds 2] [--batch-size 64] [--model deit-small-patch16-224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def one_step(model_name: str, batch_size: int, checkpointing: bool) -> dict:
    import torch

    from deit import DeiTConfig
    from deit.modeling import DeiTForImageClassificationWithTeacher, ViTForImageClassification
    from deit.train.optim import build_optimizer

    torch.manual_seed(0)
    config = DeiTConfig.from_preset(model_name, num_labels=1000)
    model_class = DeiTForImageClassificationWithTeacher if config.model_type == "deit" else ViTForImageClassification
    model = model_class(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = build_optimizer(model, 1e-3, 0.05)
    images = torch.randn(batch_size, 3, config.image_size, config.image_size)
    labels = torch.randint(0, 1000, (batch_size,))
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident set
    start = time.perf_counter()
    outputs = model(images, labels=labels)
    outputs.loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"checkpointing": checkpointing, "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "step_mib": (peak - before) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit-small-patch16-224")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.model, args.batch_size, args.child == "on")))
        return
    results: dict[bool, list[dict]] = {False: [], True: []}
    for round_index in range(args.rounds):
        order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
        for setting in order:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--model", args.model, "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[result["checkpointing"]].append(result)
            print(f"round {round_index + 1}, checkpointing {setting}: step {result['step_mib']:.0f} MiB "
                  f"(peak {result['peak_mib']:.0f}, before {result['rss_before_mib']:.0f}), {result['seconds']:.1f} s", file=sys.stderr)
    rows = []
    for checkpointing in (False, True):
        runs = results[checkpointing]
        rows.append((checkpointing, min(r["step_mib"] for r in runs), min(r["peak_mib"] for r in runs), min(r["seconds"] for r in runs)))
    print(f"| {args.model}, batch {args.batch_size}, one training step | memory the step took (MiB) | peak RSS (MiB) | step time (s) |")
    print("| --- | --- | --- | --- |")
    for checkpointing, step, peak, seconds in rows:
        print(f"| --grad-checkpointing {'on' if checkpointing else 'off'} | {step:.0f} | {peak:.0f} | {seconds:.1f} |")
    print(f"ratio on/off: memory {rows[1][1] / rows[0][1]:.2f}, time {rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()
