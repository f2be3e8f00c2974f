"""Which rows the fused Triton kernels handle: the one rule the dispatcher and the kernels both apply."""

from __future__ import annotations

import torch

KERNEL_MIN_N, KERNEL_MAX_N = 16, 16384
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_supported(n: int, dtype: torch.dtype) -> bool:
    """Whether the kernels take rows of size ``n`` in ``dtype``: powers of two 16..16384, fp32/bf16/fp16."""
    return KERNEL_MIN_N <= n <= KERNEL_MAX_N and n & (n - 1) == 0 and dtype in KERNEL_DTYPES
