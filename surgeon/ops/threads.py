"""How the CPU torch path uses the cores: one torch thread on cache-resident rows, the rest for pocketfft.

After every parallel region torch's OpenMP threads busy-wait (or, under ``OMP_WAIT_POLICY=PASSIVE``, must be
woken) for the next one. A cascade alternates short elementwise torch ops with pocketfft calls that start their
own worker threads, and a Fastfood transform is a chain of small GEMMs: the waiting and waking costs more than a
second thread gains on rows that fit in the L2 cache. Measured on 2 cores: a depth-12 ACDC forward on 64 × 4096
rows 1.8× (passive) to 5× (spinning) faster, Fastfood at batch 1–64 up to 2× faster; beyond the cache the
elementwise passes are memory-bound and two threads stream them faster, so large inputs keep torch's threads.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

CACHED_ELEMENTS = 2**19  # 2 MiB of fp32: the L2 cache of one core on the reference machine
_POCKETFFT_WORKERS: contextvars.ContextVar[int | None] = contextvars.ContextVar("pocketfft_workers", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def pocketfft_workers() -> int | None:
    """The threads pocketfft may use inside :func:`serial_on_cached_rows`, else None (use torch's count)."""
    return _POCKETFFT_WORKERS.get()


def serial_on_cached_rows(fn: F) -> F:
    """Run ``fn`` (first argument: the rows) with torch single-threaded and pocketfft on torch's thread count,
    when the rows are on CPU and hold at most ``CACHED_ELEMENTS`` numbers; otherwise unchanged."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if x.device.type != "cpu" or threads == 1 or x.numel() > CACHED_ELEMENTS or pocketfft_workers():
            return fn(x, *args, **kwargs)
        token = _POCKETFFT_WORKERS.set(threads)
        torch.set_num_threads(1)
        try:
            return fn(x, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)
            _POCKETFFT_WORKERS.reset(token)

    return wrapper  # type: ignore[return-value]
