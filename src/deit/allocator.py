"""Keep freed memory in the process: :func:`retain_freed_memory`.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves blocks above its mmap
threshold (128 KiB, raised on the fly up to 32 MiB) with fresh ``mmap`` calls and returns
them to the OS when they are freed, so every large activation of every forward pass is
faulted in again page by page: about 38,000 page faults per DeiT-S batch-16 float32 forward,
8 % of its time on a 2-core Intel Xeon (28.3 against 30.7 images/s), and 3-4 % of a DeiT-Ti
training step. Raising the thresholds lets freed blocks be reused instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["retain_freed_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused; the largest DeiT activations at usual
# batch sizes (DeiT-B batch 64: tokens x 3072 x 4 bytes, about 160 MB) stay below it.
_MMAP_THRESHOLD = 1 << 30
# Free memory at the top of the heap up to this much is kept rather than given back.
_TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS after each
    large tensor, for the rest of the process (returns whether it took effect; False on
    systems without glibc's ``mallopt``). The process's resident memory then stays near its
    peak. The ``deit`` command calls this; call it in your own inference or training process
    for the same effect. Idempotent."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
