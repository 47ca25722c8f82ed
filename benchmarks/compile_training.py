"""``deit train --compile`` on the CPU: the training step compiled by Inductor against eager.

Two copies of one model (same initial weights) train on the same batches with AdamW, one eager,
one under ``torch.compile(backend)``. Printed: the compile time (the first compiled step), the
step time of each (median over the timed steps, the two alternating step by step so that other
load on the machine hits both alike), and how far the compiled run drifts from the eager one
after the steps: the largest difference of the step losses and of the weights.

    python benchmarks/compile_training.py [--model deit-tiny-patch16-224] [--batch-size 32] [--steps 6] [--backend inductor]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from deit import DeiTConfig
from deit.modeling import DeiTForImageClassificationWithTeacher, ViTForImageClassification
from deit.train.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit-tiny-patch16-224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the compiling one")
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = DeiTConfig.from_preset(args.model, num_labels=100)
    model_class = DeiTForImageClassificationWithTeacher if config.model_type == "deit" else ViTForImageClassification
    eager = model_class(config).train()
    compiled_model = copy.deepcopy(eager)
    models = {"eager": eager, args.backend: compiled_model}
    step_fns = {"eager": eager, args.backend: torch.compile(compiled_model, backend=args.backend)}
    optimizers = {name: build_optimizer(model, 1e-4, 0.05) for name, model in models.items()}
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch_size, 3, config.image_size, config.image_size, generator=generator),
                torch.randint(0, 100, (args.batch_size,), generator=generator)) for _ in range(args.steps + 1)]
    losses: dict[str, list[float]] = {name: [] for name in models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for images, labels in batches:
        for name, forward in step_fns.items():
            start = time.perf_counter()
            loss = forward(images, labels=labels).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - start)
            losses[name].append(float(loss))
    loss_drift = max(abs(a - b) for a, b in zip(losses["eager"], losses[args.backend]))
    weight_drift = max(float((a - b).abs().max()) for a, b in zip(eager.state_dict().values(), compiled_model.state_dict().values()))
    eager_step = statistics.median(seconds["eager"][1:])
    compiled_step = statistics.median(seconds[args.backend][1:])
    print(f"| {args.model}, batch {args.batch_size}, float32 | first step (s) | step (s, median of {args.steps}) | speed-up |")
    print("| --- | --- | --- | --- |")
    print(f"| eager | {seconds['eager'][0]:.1f} | {eager_step:.2f} | 1.00 |")
    print(f"| torch.compile {args.backend} | {seconds[args.backend][0]:.1f} | {compiled_step:.2f} | {eager_step / compiled_step:.2f} |")
    print(f"after {len(batches)} steps: largest step-loss difference {loss_drift:.2e}, largest weight difference {weight_drift:.2e}")


if __name__ == "__main__":
    main()
