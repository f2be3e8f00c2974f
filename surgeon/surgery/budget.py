"""Spending a parameter budget across layers by measured sensitivity (``convert(..., budget=0.25)``).

Each layer offers sizes (ACDC depths, low-rank ranks) with their parameter counts and measured held-out fit
errors. Starting from every layer's smallest size, the allocation repeatedly takes the upgrade with the largest
drop in squared relative error per extra parameter that still fits the allowance — a greedy walk along each
layer's error/parameter curve (exact for convex curves, a good heuristic otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def allocate(curves: Mapping[str, Sequence[tuple[int, int, float]]], allowance: float) -> dict[str, int]:
    """{layer: size} from ``curves`` {layer: [(size, params, error), ...]} keeping Σ params ≤ ``allowance``
    where possible (every layer gets at least its smallest size)."""
    options = {name: sorted(curve, key=lambda t: t[1]) for name, curve in curves.items() if curve}
    chosen = {name: 0 for name in options}
    spent = sum(curve[0][1] for curve in options.values())
    while True:
        best: tuple[float, str, int] | None = None
        for name, curve in options.items():
            _, params, error = curve[chosen[name]]
            for index in range(chosen[name] + 1, len(curve)):
                _, more, better = curve[index]
                extra = more - params
                if extra <= 0 or spent + extra > allowance or better >= error:
                    continue
                gain = (error ** 2 - better ** 2) / extra
                if best is None or gain > best[0]:
                    best = (gain, name, index)
        if best is None:
            break
        _, name, index = best
        spent += options[name][index][1] - options[name][chosen[name]][1]
        chosen[name] = index
    return {name: options[name][index][0] for name, index in chosen.items()}
