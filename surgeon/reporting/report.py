"""``surgeon.report``: parameters, storage, FLOPs and training activation memory of a model, per layer.

Rows are the modules that own parameters or buffers directly (plus, with ``example_inputs``, leaf modules that
save activations or do counted FLOPs). Totals count a shared parameter once, so ``total.params`` equals
``sum(p.numel() for p in model.parameters())``. FLOPs are floating-point operations, not MACs (see
:mod:`surgeon.reporting.flops`). Activation memory is the bytes autograd saves for the backward pass during one
forward on ``example_inputs`` (measured with ``torch.autograd.graph.saved_tensors_hooks``). The model is left
untouched: no hooks or buffers are attached, and buffers a forward may update (BatchNorm statistics) are restored.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console, Group, RenderableType
from rich.table import Table
from torch import nn

from surgeon.reporting.flops import flops_of_call, flops_per_row
from surgeon.reporting.memory import SavedTensorMeter, storage_bytes


@dataclass
class LayerStats:
    """One row of a report."""

    name: str
    type: str
    shape: str
    params: int = 0                 # parameters first owned here (shared ones are counted at their first owner)
    buffers: int = 0                # buffer elements first owned here
    bytes: dict[str, int] = field(default_factory=dict)   # storage of params + buffers as fp32 / fp16 / bf16
    flops_per_row: int | None = None      # FLOPs of one application to one input row (linear-like layers)
    flops: int | None = None              # FLOPs over the example forward (with example_inputs)
    activation_bytes: int | None = None   # bytes saved for backward during the example forward
    note: str = ""


@dataclass
class Totals:
    params: int
    buffers: int
    bytes: dict[str, int]
    flops: int | None
    activation_bytes: int | None


@dataclass
class Report:
    """A model's report, optionally against a baseline report."""

    model: str
    layers: list[LayerStats]
    total: Totals
    baseline: Report | None = None

    @property
    def compression(self) -> float | None:
        """Baseline parameters / parameters (×6.0 means six times fewer)."""
        if self.baseline is None or self.total.params == 0:
            return None
        return self.baseline.total.params / self.total.params

    def to_dict(self) -> dict[str, Any]:
        data = {"model": self.model, "layers": [asdict(r) for r in self.layers], "total": asdict(self.total)}
        if self.baseline is not None:
            data["baseline"] = self.baseline.to_dict()
            data["compression"] = self.compression
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _layer_table(self) -> Table:
        table = Table(title=f"{self.model}: per layer (FLOPs, not MACs)")
        for column in ("layer", "type", "shape", "params", "buffers", "fp32", "fp16/bf16", "FLOPs/row",
                       "FLOPs (fwd)", "saved act."):
            table.add_column(column, justify="left" if column in ("layer", "type", "shape") else "right")
        for row in self.layers:
            table.add_row(row.name or "(model)", row.type, row.shape, f"{row.params:,}", f"{row.buffers:,}",
                          _bytes(row.bytes.get("fp32")), _bytes(row.bytes.get("fp16")), _count(row.flops_per_row),
                          _count(row.flops), _bytes(row.activation_bytes))
        t = self.total
        table.add_row("total", "", "", f"{t.params:,}", f"{t.buffers:,}", _bytes(t.bytes.get("fp32")),
                      _bytes(t.bytes.get("fp16")), "", _count(t.flops), _bytes(t.activation_bytes), style="bold")
        return table

    def _comparison(self) -> Table:
        assert self.baseline is not None
        before, after = self.baseline.total, self.total
        table = Table(title=f"{self.baseline.model} → {self.model}")
        for column in ("", "before", "after", "ratio"):
            table.add_column(column, justify="right")
        rows = [("parameters", before.params, after.params, _count),
                ("fp32 bytes", before.bytes.get("fp32"), after.bytes.get("fp32"), _bytes),
                ("FLOPs (fwd)", before.flops, after.flops, _count),
                ("saved activations", before.activation_bytes, after.activation_bytes, _bytes)]
        for label, b, a, fmt in rows:
            ratio = f"×{b / a:.2f}" if b and a else ""
            table.add_row(label, fmt(b), fmt(a), ratio)
        return table

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = [self._layer_table()]
        if self.baseline is not None:
            parts.append(self._comparison())
        return Group(*parts)

    def render(self, console: Console | None = None) -> None:
        (console or Console()).print(self)

    def __str__(self) -> str:
        """The rendered tables as plain text, so ``print(report)`` shows what the CLI shows."""
        console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
        console.print(self)
        return console.export_text()


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _bytes(value: int | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _shape(module: nn.Module) -> str:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = "×".join(str(k) for k in module.kernel_size)
        return f"{module.in_channels}→{module.out_channels} k{kernel}"
    shapes = [tuple(p.shape) for p in module.parameters(recurse=False)]
    return ", ".join(str(s) for s in shapes)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextmanager
def _running_statistics_where_needed(model: nn.Module) -> Iterator[None]:
    """A training batch norm that receives one value per channel (a batch-1 example reaching MobileNetV3's 1×1
    head) cannot compute batch statistics and raises; for that call only it uses its running statistics, as
    ``eval()`` would. Every other call runs exactly as in training."""

    switched: set[nn.Module] = set()

    def pre(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if module.training and isinstance(x, torch.Tensor) and x.dim() >= 2 and x.numel() == x.shape[1]:
            module.train(False)
            switched.add(module)

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        if module in switched:
            switched.discard(module)
            module.train(True)

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [h for m in norms for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for norm in norms:
            post(norm, (), None)


def _measure(model: nn.Module, example_inputs: Any) -> tuple[dict[int, int], dict[int, int], int]:
    """(flops by module id, saved bytes by module id, unattributed saved bytes) of one forward."""
    meter = SavedTensorMeter(model)
    flops: dict[int, int] = {}

    def on_call(module: nn.Module, args: tuple, output: Any) -> None:
        count = flops_of_call(module, args, output)
        if count is not None:
            flops[id(module)] = flops.get(id(module), 0) + count

    snapshot = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        with torch.enable_grad(), _running_statistics_where_needed(model), meter.measuring(on_call):
            _call(model, example_inputs)
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in snapshot:
                    buf.copy_(snapshot[name])
    return flops, meter.by_module, meter.unattributed


def report(model: nn.Module, baseline: nn.Module | Report | None = None, example_inputs: Any = None) -> Report:
    """Per-layer and total parameters, buffers, storage bytes, FLOPs and (with ``example_inputs``: a tensor, a tuple
    of positional args or a dict of keyword args) saved-activation bytes of a training forward.

    ``baseline`` (a model, reported with the same ``example_inputs``, or a Report) adds before→after totals and the
    compression ratio ``baseline params / params``.
    """
    flops: dict[int, int] = {}
    saved: dict[int, int] = {}
    unattributed = 0
    if example_inputs is not None:
        flops, saved, unattributed = _measure(model, example_inputs)
    seen_params: dict[int, str] = {}
    seen_buffers: set[int] = set()
    rows: list[LayerStats] = []
    all_tensors: list[torch.Tensor] = []
    for name, module in model.named_modules():
        own_params = list(module.named_parameters(recurse=False))
        own_buffers = [b for _, b in module.named_buffers(recurse=False) if b is not None]
        is_leaf = not any(True for _ in module.children())
        measured = id(module) in flops or saved.get(id(module), 0) > 0
        per_row = flops_per_row(module)
        if not own_params and not own_buffers and not (is_leaf and measured) and per_row is None:
            continue
        fresh = [p for _, p in own_params if id(p) not in seen_params]
        shared = [f"{pname} shared with {seen_params[id(p)]}" for pname, p in own_params if id(p) in seen_params]
        for pname, p in own_params:
            seen_params.setdefault(id(p), f"{name}.{pname}" if name else pname)
        new_buffers = [b for b in own_buffers if id(b) not in seen_buffers]
        seen_buffers.update(id(b) for b in own_buffers)
        tensors = [*fresh, *new_buffers]
        all_tensors += tensors
        rows.append(LayerStats(
            name=name, type=type(module).__name__, shape=_shape(module), params=sum(p.numel() for p in fresh),
            buffers=sum(b.numel() for b in new_buffers), bytes=storage_bytes(tensors), flops_per_row=per_row,
            flops=flops.get(id(module)) if example_inputs is not None else None,
            activation_bytes=saved.get(id(module), 0) if example_inputs is not None else None,
            note="; ".join(shared)))
    measured = example_inputs is not None
    total = Totals(params=sum(r.params for r in rows), buffers=sum(r.buffers for r in rows),
                   bytes=storage_bytes(all_tensors),
                   flops=sum(flops.values()) if measured else None,
                   activation_bytes=(sum(saved.values()) + unattributed) if measured else None)
    base = baseline
    if isinstance(baseline, nn.Module):
        base = report(baseline, example_inputs=example_inputs)
    return Report(model=type(model).__name__, layers=rows, total=total, baseline=base)
