"""Image loading from JPEG files on disk: ours (DataLoader workers, uint8, optional draft
decode) vs transformers' image processors, with the output differences in 8-bit levels.
Same as ``deit bench loading``.

    python benchmarks/image_loading.py --images 512
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("loading"))
