"""Training-step images/s (forward + backward + AdamW), DeiT-Ti batch 32, float32 and bf16
autocast: ours vs timm in the same loop. Same as ``deit bench training``.

    python benchmarks/train_step.py --rounds 5
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("training"))
