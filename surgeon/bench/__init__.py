"""Benchmarks: a shared timing harness and one module per family of ops."""

from surgeon.bench.harness import Timing, measure
from surgeon.bench.layers import BenchRow, bench_layers

__all__ = ["BenchRow", "Timing", "bench_layers", "measure"]
