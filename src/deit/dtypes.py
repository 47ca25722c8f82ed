"""Names of the floating-point precisions: the one table every reader of a dtype name uses
(``from_pretrained(torch_dtype=...)``, ``deit.optimize(dtype=...)``, ``--dtype`` / ``--amp`` on
the command line, the benchmarks)."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
# The short names the command line offers, in the order its help lists them.
PRECISIONS = ("fp32", "bf16", "fp16")


def to_dtype(value: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """``value`` as a torch dtype; a name it does not know is a ValueError naming ``what``."""
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPES)} or a torch.dtype, got {value!r}")
    return DTYPES[value]
