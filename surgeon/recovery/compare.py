"""``surgeon.compare``: every structure × budget on the user's own model and data, against the low-rank baseline.

For each structure (ACDC, Fastfood, low-rank) and parameter budget (the fraction of the selected layers' dense
parameters kept; Fastfood has a single size, so it is measured once): convert with ``init="fit"`` on calibration
rows, then report parameters, per-layer held-out fit errors, the end-to-end relative output error on held-out
inputs, the task metric (accuracy) when labels are given, the fit time and, optionally, the same after a fixed
distillation budget.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from surgeon.errors import ConfigError
from surgeon.recovery.distill import distill, logits_of
from surgeon.surgery.record import records

KINDS = ("acdc", "fastfood", "lowrank")


@dataclass
class CompareRow:
    kind: str
    budget: float | None
    params: int                       # whole model
    layer_params: int                 # the converted layers
    dense_layer_params: int
    layer_errors: dict[str, float]    # held-out fit error per converted layer
    output_error: float               # ‖f(x) − f_dense(x)‖ / ‖f_dense(x)‖ on held-out inputs
    metric: float | None              # accuracy on held-out inputs when labels are given
    fit_seconds: float
    distilled_error: float | None = None
    distilled_metric: float | None = None


@dataclass
class Comparison:
    dense_params: int
    dense_metric: float | None
    rows: list[CompareRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dense_params": self.dense_params, "dense_metric": self.dense_metric,
                "rows": [asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, path: str) -> None:
        """PNG: parameters of the converted layers vs end-to-end output error, one line per structure."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind in dict.fromkeys(r.kind for r in self.rows):
            mine = sorted((r for r in self.rows if r.kind == kind), key=lambda r: r.layer_params)
            ax.plot([r.layer_params for r in mine], [r.output_error for r in mine], marker="o", label=kind)
        ax.set_xlabel("parameters in converted layers")
        ax.set_ylabel("relative output error (held out)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120, format="png")
        plt.close(fig)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None:
        return None
    return float((logits.reshape(-1, logits.shape[-1]).argmax(-1) == labels.reshape(-1)).float().mean())


@torch.no_grad()
def _outputs(model: nn.Module, inputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([logits_of(model(part)) for part in inputs.split(chunk)])


def compare(model: nn.Module, data: torch.Tensor, *, kinds: Sequence[str] = KINDS,
            budgets: Sequence[float] = (0.1, 0.25, 0.5), labels: torch.Tensor | None = None,
            distill_steps: int = 0, held_out: float = 0.2, calibration_rows: int = 2048, batch_size: int = 64,
            seed: int = 0, quiet: bool = True, **convert_options: Any) -> Comparison:
    """Convert ``model`` for each kind × budget on ``data`` (input rows; the last ``held_out`` fraction is kept for
    evaluation, never fitted or distilled on) and measure the results. ``convert_options`` go to every
    :func:`surgeon.convert` call (e.g. ``include=``, ``min_features=``)."""
    from surgeon.surgery.convert import convert

    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"compare: kinds must be among {', '.join(KINDS)}, got {list(kinds)!r}")
    if not budgets or not all(isinstance(b, (int, float)) and 0 < b <= 1 for b in budgets):
        raise ConfigError(f"compare: budgets must be fractions in (0, 1], got {list(budgets)!r}")
    if data.shape[0] < 10:
        raise ConfigError(f"compare: needs at least 10 input rows, got {data.shape[0]}")
    if labels is not None and labels.shape[0] != data.shape[0]:
        raise ConfigError(f"compare: {labels.shape[0]} labels for {data.shape[0]} input rows")
    split = max(1, int(round(data.shape[0] * (1 - held_out))))
    fit_x, held_x = data[:split], data[split:]
    held_y = None if labels is None else labels[split:]
    calibration = [fit_x[i:i + batch_size] for i in range(0, min(split, calibration_rows), batch_size)]
    dense_out = _outputs(model, held_x)
    result = Comparison(sum(p.numel() for p in model.parameters()), _accuracy(dense_out, held_y))
    for kind in kinds:
        for budget in budgets if kind != "fastfood" else [None]:
            options = dict(convert_options, init="fit", calibration=calibration, seed=seed, quiet=quiet)
            if budget is not None:
                options["budget"] = budget
            start = time.perf_counter()
            converted = convert(copy.deepcopy(model), kind, **options)
            elapsed = time.perf_counter() - start
            changes = records(converted)[-1].changes
            out = _outputs(converted, held_x)
            row = CompareRow(kind=kind, budget=budget, params=sum(p.numel() for p in converted.parameters()),
                             layer_params=sum(c.params_after for c in changes),
                             dense_layer_params=sum(c.params_before for c in changes),
                             layer_errors={c.name: c.fit_error for c in changes if c.fit_error is not None},
                             output_error=_relative(out, dense_out), metric=_accuracy(out, held_y),
                             fit_seconds=elapsed)
            if distill_steps > 0:
                distill(converted, model, fit_x, steps=distill_steps, seed=seed, quiet=quiet)
                out = _outputs(converted, held_x)
                row.distilled_error, row.distilled_metric = _relative(out, dense_out), _accuracy(out, held_y)
            result.rows.append(row)
    return result


def table_rows(result: Comparison) -> list[list[str]]:
    """Rows of strings for a printed table (kind, budget, params, layer errors, output error, metric, time)."""
    def pct(value: float | None) -> str:
        return "—" if value is None or math.isnan(value) else f"{100 * value:.1f} %"

    rows = [["dense", "—", f"{result.dense_params:,}", "—", "0", pct(result.dense_metric), "—", "—", "—"]]
    for r in result.rows:
        errors = " / ".join(f"{e:.3f}" for e in r.layer_errors.values())
        rows.append([r.kind, "—" if r.budget is None else f"{r.budget:g}", f"{r.params:,}", errors or "—",
                     f"{r.output_error:.3f}", pct(r.metric), f"{r.fit_seconds:.1f} s",
                     "—" if r.distilled_error is None else f"{r.distilled_error:.3f}", pct(r.distilled_metric)])
    return rows


TABLE_HEADER = ["structure", "budget", "params", "layer fit errors", "output error", "metric", "fit time",
                "distilled error", "distilled metric"]
