"""Cosine similarity of the [CLS] and [DIST] token states, layer by layer, of distilled students.

The DeiT paper (Touvron et al. 2021, section 5.2) reports for its distilled DeiT-B that the
learned class and distillation tokens start almost orthogonal (cosine 0.06) and grow alike
through the network, up to 0.93 at the output: the two tokens converge to similar, not equal,
representations. This script measures the same thing on our checkpoints (e.g. the student that
``deit demo`` saves), averaged over the validation images of a data set, and prints a markdown
table with one column per checkpoint.

    .venv/bin/python benchmarks/token_similarity.py runs/demo/student --data mnist5k
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader

from deit import AutoModelForImageClassification
from deit.explain import token_similarity
from deit.processing import DeiTImageProcessor
from deit.train.data import build_dataset


def similarity_per_layer(source: str, data: str, images: int, batch_size: int = 100) -> list[float]:
    model = AutoModelForImageClassification.from_pretrained(source)
    processor = DeiTImageProcessor.for_model(source, model.config.image_size)
    dataset = build_dataset(data, "val", lambda image: processor(image, return_tensors="pt")["pixel_values"][0])
    count = min(images, len(dataset)) if images > 0 else len(dataset)
    subset = torch.utils.data.Subset(dataset, range(count))
    embeddings = model.backbone.embeddings
    learned = torch.cosine_similarity(embeddings.cls_token.detach().flatten(), embeddings.distillation_token.detach().flatten(), dim=0)
    total, seen = None, 0
    for pixels, _ in DataLoader(subset, batch_size=batch_size):
        batch = token_similarity(model, pixels) * len(pixels)
        total = batch if total is None else total + batch
        seen += len(pixels)
    return [float(learned)] + (total / seen).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="distilled checkpoints (folders or weights files)")
    parser.add_argument("--data", default="mnist5k", help="data set whose val split is averaged over (default mnist5k)")
    parser.add_argument("--images", type=int, default=0, help="number of validation images (default 0: all)")
    args = parser.parse_args()
    columns = [similarity_per_layer(m, args.data, args.images) for m in args.models]
    depth = len(columns[0]) - 3
    print("| state | " + " | ".join(args.models) + " |")
    print("|---|" + "---:|" * len(columns))
    names = ["learned tokens (parameters)", "embeddings (tokens + positions)"] + [f"after block {i + 1}" for i in range(depth)] + ["output (final LayerNorm)"]
    for row, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{c[row]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
