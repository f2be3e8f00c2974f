"""CPU benchmark of the structured layers against the dense layer they replace (issue targets in ``target``).

Every row is a ratio of medians measured in this one run: ``speedup = baseline / candidate``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from surgeon.bench.harness import Timing, forward_backward, forward_only, measure
from surgeon.bench.inference import transforms_only
from surgeon.layers import ACDCLinear, FastfoodLinear
from surgeon.ops.dct import dct


@dataclass
class BenchRow:
    """One comparison: ``candidate`` against ``baseline`` on the same input."""

    case: str
    candidate: str
    baseline: str
    candidate_ms: float
    baseline_ms: float
    speedup: float            # baseline time / candidate time
    target: str               # the goal for this row, "" when informative only
    met: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def _row(case: str, candidate: str, cand: Timing, baseline: str, base: Timing,
         min_speedup: float | None = None) -> BenchRow:
    speedup = base.median / cand.median
    target = "" if min_speedup is None else f"≥ {min_speedup:g}×"
    met = None if min_speedup is None else speedup >= min_speedup
    return BenchRow(case, candidate, baseline, cand.median * 1e3, base.median * 1e3, speedup, target, met)


def _torch_fft_dct(x: torch.Tensor) -> torch.Tensor:
    return dct(x, engine="torch")


def _scipy_dct(x: torch.Tensor) -> torch.Tensor:
    return dct(x, engine="scipy")


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def bench_layers(sizes: Sequence[int] = (4096, 8192), batch: int = 256, depth: int = 12, repeats: int = 5,
                 on_case: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Forward+backward, fp32, on CPU with the machine's threads (the structured-layers issue's table).

    For each N in ``sizes``: one ACDC factor and a ``depth``-factor ACDCLinear (default memory rule and
    ``recompute=False``) against ``nn.Linear(N, N)``, the 6K-1 and 4K transforms those two make per step timed
    alone (their floors),
    Adaptive Fastfood against the same, and one ACDC factor's forward against two of the fastest DCTs
    available (scipy's pocketfft and a torch.fft formulation; the faster one is the yardstick).
    """
    torch.manual_seed(0)
    rows: list[BenchRow] = []
    for n in sizes:
        def announce(what: str, n: int = n) -> None:
            if on_case is not None:
                on_case(f"N={n}: {what}")

        x = torch.randn(batch, n, requires_grad=True)
        announce("nn.Linear")
        dense = measure(forward_backward(nn.Linear(n, n), x), repeats=max(3, repeats // 2))
        announce("ACDC factor")
        factor_layer = ACDCLinear(n, n, depth=1)
        factor = measure(forward_backward(factor_layer, x), repeats=repeats)
        rows.append(_row(f"N={n} fwd+bwd", "ACDC factor", factor, f"nn.Linear({n}, {n})", dense,
                         10 if n == 4096 else None))
        announce(f"ACDCLinear depth {depth}")
        cascade = measure(forward_backward(ACDCLinear(n, n, depth=depth), x), repeats=max(3, repeats // 2))
        rows.append(_row(f"N={n} fwd+bwd", f"ACDCLinear depth {depth}", cascade, f"nn.Linear({n}, {n})", dense,
                         3 if n == 8192 and depth == 12 else None))
        announce(f"ACDCLinear depth {depth}, recompute=False")
        saving = measure(forward_backward(ACDCLinear(n, n, depth=depth, recompute=False), x),
                         repeats=max(3, repeats // 2))
        rows.append(_row(f"N={n} fwd+bwd", f"ACDCLinear depth {depth}, recompute=False", saving,
                         f"nn.Linear({n}, {n})", dense, 3 if n == 8192 and depth == 12 else None))
        announce("the transforms alone")
        # Floors: a depth-K forward+backward makes 6K-1 transforms with recomputation, 4K without; no fusion of
        # the elementwise passes can beat the time of those transforms alone on the same rows.
        for count, rule in ((6 * depth - 1, "default rule"), (4 * depth, "recompute=False")):
            floor = measure(lambda count=count, buffer=x.detach().clone(): transforms_only(buffer, count),
                            repeats=max(3, repeats // 2))
            rows.append(_row(f"N={n} fwd+bwd", f"{count} DCTs alone (depth {depth}, {rule})", floor,
                             f"nn.Linear({n}, {n})", dense))
        announce("Adaptive Fastfood")
        fastfood = measure(forward_backward(FastfoodLinear(n, n), x), repeats=repeats)
        rows.append(_row(f"N={n} fwd+bwd", "Adaptive Fastfood", fastfood, f"nn.Linear({n}, {n})", dense))

        announce("DCT engines")
        rows_in = x.detach()
        dcts = {name: measure(lambda f=f, rows_in=rows_in: f(rows_in), repeats=repeats, min_seconds=0.05)
                for name, f in (("scipy DCT", _scipy_dct), ("torch.fft DCT", _torch_fft_dct))}
        fastest_name = min(dcts, key=lambda k: dcts[k].median)
        two = Timing(2 * dcts[fastest_name].median, 2 * dcts[fastest_name].minimum,
                     2 * dcts[fastest_name].maximum, dcts[fastest_name].repeats)
        factor_fwd = measure(forward_only(factor_layer, rows_in), repeats=repeats, min_seconds=0.05)
        row = _row(f"N={n} fwd", "ACDC factor", factor_fwd, f"2 × {fastest_name}", two)
        # The goal is a bound on the factor's time: factor ≤ 1.5 × (two DCTs), i.e. speedup ≥ 1/1.5.
        row.target, row.met = "≤ 1.5× two DCTs", row.speedup >= 1 / 1.5
        rows.append(row)
        slow_name = max(dcts, key=lambda k: dcts[k].median)
        rows.append(_row(f"N={n} fwd", fastest_name, dcts[fastest_name], slow_name, dcts[slow_name]))
    return rows
