"""The dense transform matrices: orthonormal DCT-II (thesis eq. 3.27) and Sylvester Hadamard (§3.9).

Used as references, as the small-N dense path, and as the kernels' constant tables.
"""

from __future__ import annotations

import functools
import math

import torch


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The dense N x N orthonormal DCT-II matrix of eq. 3.27 (rows are frequencies):
    ``C[k, n] = sqrt(2/N) ε_k cos(π(2n + 1)k / 2N)``, ε_0 = 1/√2, ε_k = 1 otherwise."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _hadamard_cpu64(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                    normalized: bool = False) -> torch.Tensor:
    """The dense N x N Sylvester Hadamard matrix (entries ±1, or ±1/sqrt(N) when ``normalized``)."""
    if not is_power_of_two(n):
        raise ValueError(f"the Hadamard transform needs a power-of-two size, got {n}")
    h = _hadamard_cpu64(n)
    if normalized:
        h = h / math.sqrt(n)
    return h.to(device=device, dtype=dtype)
