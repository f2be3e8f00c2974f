"""How the CPU torch path uses the cores: one torch thread on cache-resident rows, the rest for pocketfft.

After every parallel region torch's OpenMP threads busy-wait (or, under ``OMP_WAIT_POLICY=PASSIVE``, must be
woken) for the next one. A cascade alternates short elementwise torch ops with pocketfft calls that start their
own worker threads, and a Fastfood transform is a chain of small GEMMs: the waiting and waking costs more than a
second thread gains on rows that fit in the L2 cache. Measured on 2 cores: a depth-12 ACDC forward on 64 × 4096
rows 1.8× (passive) to 5× (spinning) faster, Fastfood at batch 1–64 up to 2× faster.

Beyond the cache every elementwise pass streams the whole batch through memory. The ACDC cascade therefore runs
large batches in row blocks of ``ROW_BLOCK_ELEMENTS`` numbers (:func:`row_blocks`), every factor of a block
before the next block, so that its passes between transforms hit the cache: at N = 8192, batch 256, the forward
ran 2.3× and the recomputing backward 3× faster than on the whole batch with two torch threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

CACHED_ELEMENTS = 2**19  # 2 MiB of fp32: the L2 cache of one core on the reference machine
ROW_BLOCK_ELEMENTS = 2**18  # a block and its few scratch rows of the same size together fit in that cache
# pocketfft threads a call only on at least this many numbers: below it (N = 4096 up to 32 rows) waking its
# second thread cost more than it saved (1.1-1.8x slower at 8-32 rows, ~3x under load, see pocketfft_threads).
POCKETFFT_THREADED_ELEMENTS = 2**18
_POCKETFFT_WORKERS: contextvars.ContextVar[int | None] = contextvars.ContextVar("pocketfft_workers", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def pocketfft_workers() -> int | None:
    """The threads pocketfft may use inside :func:`serial_torch`, else None (use torch's count)."""
    return _POCKETFFT_WORKERS.get()


def pocketfft_threads(numbers: int) -> int:
    """Threads for one pocketfft call on ``numbers`` numbers: one below ``POCKETFFT_THREADED_ELEMENTS``, else
    :func:`pocketfft_workers` (torch's thread count outside :func:`serial_torch`).

    pocketfft splits a call over threads by groups of SIMD rows (4 fp32 rows here) and wakes its pool for every
    call; a cascade makes 2K calls per row block, so on a few rows (N = 4096, batch 8: ~60 µs of work per call)
    the hand-over cost more than the second core gave — measured 1.1-1.8x slower at 8-32 rows of 1024-8192 on
    the reference machine, about 3x while other jobs held the cores — and won only from about 64 rows of 4096.
    """
    if numbers < POCKETFFT_THREADED_ELEMENTS:
        return 1
    return pocketfft_workers() or max(1, torch.get_num_threads())


@contextlib.contextmanager
def serial_torch(x: torch.Tensor) -> Iterator[None]:
    """Within the block, when ``x`` is on CPU: torch single-threaded and pocketfft on torch's thread count."""
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1 or pocketfft_workers():
        yield
        return
    token = _POCKETFFT_WORKERS.set(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _POCKETFFT_WORKERS.reset(token)


def row_blocks(rows: int, n: int, blocked: bool = True) -> list[slice]:
    """Consecutive ranges covering ``rows`` rows of size ``n``, each of at most ``ROW_BLOCK_ELEMENTS`` numbers
    (at least one row); a single range when not ``blocked``. A row range of a contiguous (rows, n) tensor is
    itself contiguous, so blocks are views that in-place transforms and ``out=`` arguments accept."""
    step = rows if not blocked else max(1, ROW_BLOCK_ELEMENTS // max(n, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, max(step, 1))] or [slice(0, 0)]


def serial_on_cached_rows(fn: F) -> F:
    """Run ``fn`` (first argument: the rows) under :func:`serial_torch` when the rows are on CPU and hold at most
    ``CACHED_ELEMENTS`` numbers; otherwise unchanged."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.numel() > CACHED_ELEMENTS:
            return fn(x, *args, **kwargs)
        with serial_torch(x):
            return fn(x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
