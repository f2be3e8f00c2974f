"""Fit-speed benchmark: closed-form fitting against the first-order (Adam) fit it replaced, in one run.

``python -m surgeon.bench.fit [--sizes 256,1024] [--depth 12] [--rows 2048] [--repeats 3] [--baseline-repeats 1]
[--no-baseline]``

Each case is a dense N×N layer whose weight has a decaying spectrum (σ_i = 1/(1 + i/8)), applied to rows
``relu(z M)`` (correlated, non-negative — like the hidden activations of a trained MLP). Both methods fit the same
ACDC cascade (same seed) on the same rows; the table gives median wall time and held-out relative error, and the
speed-up as a ratio measured in the same run, the methods interleaved — both for the default closed-form fit (the
path ``convert(..., init="fit", calibration=...)`` takes) and for the time the closed form needs to reach the Adam
fit's held-out error ("at equal error"). The Adam fit is slow at N = 1024 (minutes), so it runs
``--baseline-repeats`` times (default once); each row ends with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence

import torch

from surgeon.layers.acdc import ACDCLinear
from surgeon.surgery.fit import DenseMap, _fit_by_gradient, fit_layer, split
from surgeon.surgery.fit_acdc import fit_cascade
from surgeon.surgery.moments import Moments


def problem(size: int, rows: int, seed: int = 0) -> tuple[DenseMap, torch.Tensor]:
    """(dense map, input rows) of one benchmark case."""
    gen = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    sigma = 1.0 / (1.0 + torch.arange(size, dtype=torch.float64) / 8)
    weight = (left * sigma) @ right.T
    mix = torch.randn(size, size, generator=gen) / size ** 0.5
    inputs = torch.relu(torch.randn(rows, size, generator=gen) @ mix)
    return DenseMap(weight.float(), 0.1 * torch.randn(size, generator=gen)), inputs


def _closed(size: int, depth: int, dense: DenseMap, inputs: torch.Tensor) -> tuple[float, float]:
    layer = ACDCLinear(size, size, depth=depth, activation=None, seed=0)
    start = time.perf_counter()
    result = fit_layer(layer, dense, inputs)
    return time.perf_counter() - start, result.error


def _closed_until(size: int, depth: int, dense: DenseMap, inputs: torch.Tensor, goal: float) -> tuple[float, float]:
    """Time for the closed-form fit to reach held-out error ``goal`` (the Adam fit's), moments included."""
    layer = ACDCLinear(size, size, depth=depth, activation=None, seed=0)
    start = time.perf_counter()
    train, held = split(inputs)
    error, _ = fit_cascade(layer, Moments.of(train, dense(train)), Moments.of(held, dense(held)), sweeps=64,
                           stop_at=goal)
    return time.perf_counter() - start, error


def _adam(size: int, depth: int, dense: DenseMap, inputs: torch.Tensor) -> tuple[float, float]:
    layer = ACDCLinear(size, size, depth=depth, activation=None, seed=0)
    start = time.perf_counter()
    train, held = split(inputs)
    result = _fit_by_gradient(layer, train, dense(train), held, dense(held), steps=300, lr=3e-2, batch_rows=512,
                              seed=0, tick=None)
    return time.perf_counter() - start, result.error


def run(sizes: Sequence[int], depth: int, rows: int, repeats: int, baseline: bool,
        baseline_repeats: int = 1) -> list[dict[str, float]]:
    table = []
    for size in sizes:
        dense, inputs = problem(size, rows)
        times: dict[str, list[float]] = {"closed": [], "adam": [], "until": []}
        errors: dict[str, float] = {}
        for i in range(max(repeats, baseline_repeats if baseline else 0)):
            if i < repeats:
                elapsed, errors["closed"] = _closed(size, depth, dense, inputs)
                times["closed"].append(elapsed)
            if baseline and i < baseline_repeats:
                elapsed, errors["adam"] = _adam(size, depth, dense, inputs)
                times["adam"].append(elapsed)
        closed = statistics.median(times["closed"])
        row = {"N": size, "depth": depth, "rows": rows, "closed_s": closed, "closed_error": errors["closed"]}
        if baseline:
            for _ in range(repeats):
                elapsed, _ = _closed_until(size, depth, dense, inputs, errors["adam"])
                times["until"].append(elapsed)
            adam, to_goal = statistics.median(times["adam"]), statistics.median(times["until"])
            row.update(adam_s=adam, adam_error=errors["adam"], speedup=adam / closed,
                       closed_to_adam_error_s=to_goal, speedup_at_equal_error=adam / to_goal)
        row["load"] = os.getloadavg()[0]
        table.append(row)
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-repeats", type=int, default=1, help="runs of the (slow) Adam fit per size")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Adam fit (slow at N=1024)")
    args = parser.parse_args(argv)
    run([int(s) for s in args.sizes.split(",")], args.depth, args.rows, args.repeats, not args.no_baseline,
        args.baseline_repeats)


if __name__ == "__main__":
    main()
