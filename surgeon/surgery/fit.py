"""Fitting a structured layer to the dense layer it replaces (``convert(..., init="fit")``).

The target is the dense map ``y = W x + b``; the fit minimises the normalised squared error
``‖Φ(X) − Y‖²_F / ‖Y‖²_F`` with Adam (cosine-decayed learning rate) over rows ``X`` that are either the layer's real
inputs, captured from calibration batches, or standard-normal probes (data-free). A fifth of the rows is held out
and never trained on; the reported error is the relative output error on it (thesis notation)::

    fit_error = ‖W x − Φ(x)‖ / ‖W x‖     (Frobenius norms over the held-out rows, W x including the bias)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from surgeon.errors import FitError

Batch = Any


@dataclass
class DenseMap:
    """The dense layer a replacement must imitate: weight (out, in) and optional bias (out,)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


@dataclass
class FitResult:
    error: float          # held-out relative output error
    train_error: float    # the same on the rows it was fitted to


def _call(model: Callable[..., Any], batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class _Rows:
    """Collects up to ``limit`` input rows (last dim ``features``) per layer."""

    def __init__(self, features: int, limit: int, channel_dim: int = -1) -> None:
        self.features, self.limit, self.parts, self.count = features, limit, [], 0
        self.channel_dim = channel_dim   # where the features sit in the input (a convolution's channel axis)

    def add(self, x: torch.Tensor) -> None:
        if self.count >= self.limit:
            return
        rows = x.detach().movedim(self.channel_dim, -1).reshape(-1, self.features)[: self.limit - self.count].float()
        self.parts.append(rows.clone())
        self.count += rows.shape[0]

    def tensor(self) -> torch.Tensor | None:
        return torch.cat(self.parts) if self.parts else None


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, watch: dict[fx.Node, _Rows]) -> None:
        super().__init__(module)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        rows = self.watch.get(n)
        if rows is not None:
            args, _ = self.fetch_args_kwargs_from_env(n)
            rows.add(args[0])
        return super().run_node(n)


@torch.no_grad()
def capture_inputs(root: nn.Module, graph: fx.Graph | None, modules: Mapping[str, nn.Module],
                   calls: Mapping[str, list[fx.Node]], features: Mapping[str, int],
                   calibration: Iterable[Batch], limit: int,
                   channel_dims: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Real inputs of each layer, keyed by site name, from running ``root`` on ``calibration`` in eval mode.

    ``modules`` maps site names to dense modules (forward hooks capture their input); ``calls`` maps site names to
    fx call nodes (an fx Interpreter over a copy of ``graph`` captures their first argument). Returns (rows, in)
    float32 tensors with at most ``limit`` rows each; ``channel_dims`` names, per site, the input axis holding the
    features when it is not the last (a 1×1 convolution's channel axis). The model's train/eval flags are
    restored afterwards.
    """
    dims = dict(channel_dims or {})
    store = {name: _Rows(features[name], limit, dims.get(name, -1)) for name in [*modules, *calls]}
    handles = [module.register_forward_hook(lambda m, args, out, rows=store[name]: rows.add(args[0]))
               for name, module in modules.items()]
    modes = {m: m.training for m in root.modules()}
    runner: Callable[..., Any] = root
    if calls:
        assert graph is not None
        copy_graph, mapping = fx.Graph(), {}
        copy_graph.output(copy_graph.graph_copy(graph, mapping))
        watch = {mapping[node]: store[name] for name, nodes in calls.items() for node in nodes}
        recorder = _Recorder(fx.GraphModule(root, copy_graph), watch)
        runner = recorder.run
    try:
        root.eval()
        for batch in calibration:
            _call(runner, batch)
            if all(rows.count >= limit for rows in store.values()):
                break
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    captured = {name: rows.tensor() for name, rows in store.items()}
    missing = [name for name, rows in captured.items() if rows is None]
    if missing:
        raise FitError(f"no calibration batch reached {', '.join(missing)}; check that calibration yields model inputs")
    return {name: rows for name, rows in captured.items() if rows is not None}


def probe_inputs(features: int, rows: int, seed: int | None) -> torch.Tensor:
    """Data-free probes: (rows, features) standard-normal float32 rows."""
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else int(seed))
    return torch.randn(rows, features, generator=gen)


def split(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) rows: every fifth row is held out (at least one row each)."""
    if inputs.shape[0] < 2:
        raise FitError(f"fitting needs at least 2 input rows, got {inputs.shape[0]}")
    held = torch.zeros(inputs.shape[0], dtype=torch.bool)
    held[4::5] = True
    if not held.any():
        held[-1] = True
    return inputs[~held], inputs[held]


@torch.no_grad()
def relative_error(layer: nn.Module, dense: DenseMap, inputs: torch.Tensor, chunk: int = 1024) -> float:
    """``‖W x − Φ(x)‖ / ‖W x‖`` over ``inputs`` (rows, in), in float64 accumulation."""
    num, den = 0.0, 0.0
    for part in inputs.split(chunk):
        target = dense(part).double()
        out = layer(part.to(_dtype(layer))).double()
        num += float((out - target).pow(2).sum())
        den += float(target.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def _dtype(layer: nn.Module) -> torch.dtype:
    return next((p.dtype for p in layer.parameters() if p.is_floating_point()), torch.float32)


def fit_layer(layer: nn.Module, dense: DenseMap, inputs: torch.Tensor, *, steps: int = 300, lr: float = 3e-2,
              batch_rows: int = 512, seed: int | None = None,
              tick: Callable[[float], None] | None = None) -> FitResult:
    """Fit ``layer``'s parameters in place so that ``layer(x) ≈ dense(x)`` on ``inputs`` (rows, in).

    Optimisation runs in float32 on a float32 copy when the layer is fp16/bf16, then copies the result back.
    """
    train, held = split(inputs)
    device = next(iter(layer.parameters()), torch.empty(0)).device
    train, held = train.to(device), held.to(device)
    dense = DenseMap(dense.weight.detach().to(device), None if dense.bias is None else dense.bias.detach().to(device))
    work = layer if _dtype(layer) in (torch.float32, torch.float64) else _float_copy(layer)
    params = list(work.parameters())
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else int(seed))
    modes = work.training
    work.train()
    if params and steps > 0:
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(params, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        with torch.no_grad():
            scale = dense(train).pow(2).mean().clamp_min(1e-12)
        for step in range(steps):
            if train.shape[0] > batch_rows:
                rows = train[torch.randint(0, train.shape[0], (batch_rows,), generator=gen).to(device)]
            else:
                rows = train
            with torch.enable_grad():
                loss = (work(rows.to(_dtype(work))) - dense(rows).to(_dtype(work))).pow(2).mean() / scale
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            optimiser.step()
            schedule.step()
            if tick is not None:
                tick((step + 1) / steps)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    work.train(modes)
    if work is not layer:
        with torch.no_grad():
            for dst, src in zip(layer.parameters(), work.parameters()):
                dst.copy_(src.to(dst.dtype))
    return FitResult(error=relative_error(layer, dense, held), train_error=relative_error(layer, dense, train))


def _float_copy(layer: nn.Module) -> nn.Module:
    return copy.deepcopy(layer).float()
