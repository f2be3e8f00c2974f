"""The shared timing harness every benchmark uses: warm up, repeat, report median/min/max.

Speed claims in surgeon are ratios of two medians taken in one process on one machine, never absolute
times compared across runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call."""

    median: float
    minimum: float
    maximum: float
    repeats: int


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, device: torch.device | str | None = "cpu", warmup: int = 2,
            repeats: int = 7, min_seconds: float = 0.0) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed calls (more until
    ``min_seconds`` of timed work has accumulated, so that fast calls are not dominated by timer noise)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < min_seconds:
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
        if len(samples) >= 1000:
            break
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A closure running one forward and backward pass of ``module`` on ``x`` (gradients zeroed first)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()

    return step


def forward_only(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(x)

    return step
