"""Inference images/s: ours vs transformers (eager, sdpa) and timm, DeiT-Ti/S/B, batch 1 and 16,
float32 and bfloat16, with the Linear-only bounds of the same run. Same as ``deit bench inference``.

    python benchmarks/inference.py --wait-quiet 1.0 --output results/inference.md
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("inference"))
