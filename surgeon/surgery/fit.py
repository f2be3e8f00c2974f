"""Fitting a structured layer to the dense layer it replaces (``convert(..., init="fit")``).

The target is the dense map ``y = W x + b`` (or, fitting sequentially, the dense model's own activations); the fit
minimises the normalised squared error ``‖Φ(X) − Y‖²_F / ‖Y‖²_F`` over rows ``X`` that are either the layer's real
inputs, captured from calibration batches, or standard-normal probes (data-free); see :func:`fit_layer` for how.
A fifth of the rows is held out and never trained on; the reported error is the relative output error on it
(thesis notation)::

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
from surgeon.surgery.fit_acdc import fit_cascade, single_threaded_torch
from surgeon.surgery.fit_fastfood import fit_fastfood
from surgeon.surgery.fit_lowrank import fit_lowrank
from surgeon.surgery.moments import Moments

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


def call_with(model: Callable[..., Any], batch: Batch) -> Any:
    """``model`` applied to one batch: a tensor, a tuple of positional args or a dict of keyword args."""
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
    restored afterwards. Torch runs single-threaded meanwhile (calibration batches are small: see
    :func:`~surgeon.surgery.fit_acdc.single_threaded_torch`).
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
        with single_threaded_torch():
            for batch in calibration:
                call_with(runner, batch)
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
              batch_rows: int = 512, seed: int | None = None, tick: Callable[[float], None] | None = None,
              targets: torch.Tensor | None = None, sweeps: int | None = None) -> FitResult:
    """Fit ``layer``'s parameters in place so that ``layer(x) ≈ targets`` on ``inputs`` (rows, in); ``targets``
    (rows, out) defaults to ``dense(inputs)`` (sequential fitting passes the dense model's own activations).

    Linear structures are fitted in closed form on the rows' second moments (:mod:`surgeon.surgery.moments`):
    ACDC cascades without activation by alternating least squares over their diagonals
    (:mod:`~surgeon.surgery.fit_acdc`), Fastfood block by block (:mod:`~surgeon.surgery.fit_fastfood`), low-rank
    layers by the activation-whitened truncated SVD (:mod:`~surgeon.surgery.fit_lowrank`). Anything else (a
    cascade with activations) takes ``steps`` Adam steps on row batches. ``sweeps`` caps the closed-form sweeps
    (a quick estimate, e.g. for budget curves; default: the solvers' own). Every path keeps the parameters with the
    lowest held-out error seen, the starting ones included, so a fit never makes a layer worse.
    """
    closed = _closed_form(layer)
    if closed is not None:
        extra = {} if sweeps is None or closed is fit_lowrank else {"sweeps": sweeps}
        with single_threaded_torch():      # moments and solves: short kernels, see single_threaded_torch
            if targets is None:
                targets = dense(inputs)
            (train, held), (train_t, held_t) = split(inputs), split(targets)
            result = closed(layer, Moments.of(train, train_t), Moments.of(held, held_t), **extra)
        if tick is not None:
            tick(1.0)
        return FitResult(error=result[0], train_error=result[1])
    if targets is None:
        targets = dense(inputs)
    train, held = split(inputs)
    train_t, held_t = split(targets)
    return _fit_by_gradient(layer, train, train_t, held, held_t, steps=steps, lr=lr, batch_rows=batch_rows,
                            seed=seed, tick=tick)


def _closed_form(layer: nn.Module) -> Callable[..., tuple[float, float]] | None:
    from surgeon.layers.acdc import ACDCLinear
    from surgeon.layers.fastfood import FastfoodLinear
    from surgeon.layers.lowrank import LowRankLinear

    if isinstance(layer, ACDCLinear) and layer.activation == "none":
        return fit_cascade
    if isinstance(layer, FastfoodLinear):
        return fit_fastfood
    if isinstance(layer, LowRankLinear):
        return fit_lowrank
    return None


@torch.no_grad()
def _row_error(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> float:
    num, den = 0.0, 0.0
    for part, target in zip(inputs.split(chunk), targets.split(chunk)):
        out = layer(part.to(_dtype(layer))).double()
        num += float((out - target.double()).pow(2).sum())
        den += float(target.double().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def _fit_by_gradient(layer: nn.Module, train: torch.Tensor, train_t: torch.Tensor, held: torch.Tensor,
                     held_t: torch.Tensor, *, steps: int, lr: float, batch_rows: int, seed: int | None,
                     tick: Callable[[float], None] | None) -> FitResult:
    """Adam with a cosine-decayed learning rate on row batches; fp16/bf16 layers are optimised on a float32 copy."""
    device = next(iter(layer.parameters()), torch.empty(0)).device
    train, train_t, held, held_t = (t.to(device) for t in (train, train_t, held, held_t))
    work = layer if _dtype(layer) in (torch.float32, torch.float64) else _float_copy(layer)
    start_error = _row_error(layer, held, held_t)
    start = copy.deepcopy(layer.state_dict())
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
        scale = train_t.pow(2).mean().clamp_min(1e-12)
        for step in range(steps):
            index = (torch.randint(0, train.shape[0], (batch_rows,), generator=gen).to(device)
                     if train.shape[0] > batch_rows else slice(None))
            with torch.enable_grad():
                loss = (work(train[index].to(_dtype(work))) - train_t[index].to(_dtype(work))).pow(2).mean() / scale
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
    if _row_error(layer, held, held_t) > start_error:
        layer.load_state_dict(start)
    return FitResult(error=_row_error(layer, held, held_t), train_error=_row_error(layer, train, train_t))


def _float_copy(layer: nn.Module) -> nn.Module:
    return copy.deepcopy(layer).float()
