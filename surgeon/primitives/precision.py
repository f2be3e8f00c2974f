"""The compute-dtype rule of every structured op: fp64 stays fp64, everything else is computed in fp32.

Half-precision inputs (fp16/bf16) would round sums of N terms badly and overflow in the transforms, so they are
promoted to fp32 and the result cast back by the caller.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the structured ops compute in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32
