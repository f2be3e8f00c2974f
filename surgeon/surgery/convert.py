"""``convert``: replace ``nn.Linear`` modules and ``F.linear`` calls with ACDC or Adaptive Fastfood layers.

Thesis §3.9 (Fastfood, ``y = S H G Π H B x``) and §3.10 (ACDC cascades, eq. 3.24 ``Φ = Π_k A_k C D_k C⁻¹``).
The walking, selection, fallback and records are the shared engine's (:mod:`surgeon.surgery.engine`); this
module only says which sites are linear layers, which of them to leave alone, and how to build and fit the
structured replacement.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.parameter import UninitializedParameter

from surgeon.configs.base import TransformConfig
from surgeon.configs.linear import AUTO_DEPTHS, DEFAULT_DEPTH, ACDCConfig, FastfoodConfig, LinearConfig, LowRankConfig
from surgeon.errors import ConfigError, FitWarning
from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.layers.lowrank import LowRankLinear, rank_for_ratio
from surgeon.surgery import linear_sources
from surgeon.surgery.budget import allocate
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.fit import DenseMap, capture_inputs, fit_layer, probe_inputs, relative_error, split
from surgeon.surgery.fit_lowrank import rank_curve
from surgeon.surgery.moments import Moments
from surgeon.surgery.progress import LazyProgress
from surgeon.surgery.rules import Replacement, Rule, Site, SurgeryContext
from surgeon.surgery.select import FilterFn, Pattern
from surgeon.surgery.transform import Call, make_config, register_transform, run_transform

_MHA_REASON = ("its packed in-projection (in_proj_weight) and out_proj are applied by "
               "F.multi_head_attention_forward, which reads the weights directly; a replacement would be ignored")


@dataclass(frozen=True)
class LinearStructure:
    """How ``convert`` builds one kind of structured layer from its config.

    ``layer(in_features, out_features, bias=, seed=, device=, dtype=, **options(config, in_features,
    out_features))`` builds it (plus
    ``depth=`` when ``has_depth``: the config then has a ``depth`` field, an integer, a mapping or ``"auto"``);
    ``param_count(config, in_features, out_features, bias, depth)`` counts its parameters without building it.
    ``size_of(config, name, in_features, out_features, bias)``, when given, is the layer's size argument
    ``size_name`` (a low-rank layer's ``rank=``), passed to ``layer`` and to ``param_count`` in place of a depth.
    """

    layer: type[nn.Module]
    options: Callable[[Any, int, int], dict[str, Any]]
    param_count: Callable[[Any, int, int, bool, int], int]
    has_depth: bool = False
    size_of: Callable[[Any, str, int, int, bool], int] | None = None
    size_name: str = "depth"


STRUCTURES: dict[type[LinearConfig], LinearStructure] = {}


def register_linear(config_type: type[LinearConfig], structure: LinearStructure) -> None:
    """Make ``convert`` accept ``config_type``: one config class plus its :class:`LinearStructure`."""
    STRUCTURES[config_type] = structure
    register_transform(config_type)(_convert_with)


def _acdc_params(config: ACDCConfig, in_features: int, out_features: int, bias: bool, depth: int) -> int:
    return depth * max(in_features, out_features) * (3 if bias else 2)


def _fastfood_params(config: FastfoodConfig, in_features: int, out_features: int, bias: bool, depth: int) -> int:
    d = 1 << max(0, (in_features - 1).bit_length())
    blocks = -(-out_features // d)
    return (3 * blocks * d if config.adaptive else 0) + (out_features if bias else 0)


def _lowrank_params(config: LowRankConfig, in_features: int, out_features: int, bias: bool, rank: int) -> int:
    return min(rank, in_features, out_features) * (in_features + out_features) + (out_features if bias else 0)


DEFAULT_LOWRANK_RATIO = 0.25
# Sweeps of the quick fits that measure each depth's error for a budget (ranking depths, not final fits).
BUDGET_SWEEPS = 2


def _lowrank_rank(config: LowRankConfig, name: str, in_features: int, out_features: int, bias: bool) -> int:
    if isinstance(config.rank, dict):
        if name in config.rank:
            return int(config.rank[name])
    elif config.rank is not None:
        return int(config.rank)
    ratio = config.ratio if config.ratio is not None else DEFAULT_LOWRANK_RATIO
    return rank_for_ratio(in_features, out_features, ratio, bias)


def _quantized_linear_types() -> dict[type[nn.Module], str]:
    found: dict[type[nn.Module], str] = {}
    for path in ("torch.ao.nn.quantized", "torch.ao.nn.quantized.dynamic", "torch.ao.nn.intrinsic.quantized"):
        try:
            module = __import__(path, fromlist=["Linear"])
        except ImportError:  # pragma: no cover - depends on the torch build
            continue
        kind = getattr(module, "Linear", None)
        if isinstance(kind, type):
            found[kind] = "quantized linear: its weight is packed int8, not a float matrix to restructure"
    return found


def _linear_shape(site: Site) -> tuple[int, int, bool, torch.Tensor]:
    """(in_features, out_features, has_bias, weight (out, in)) of a module or F.linear site."""
    if site.source == "module":
        assert site.module is not None
        seen = linear_sources.view(site.module)
        return seen.in_features, seen.out_features, seen.bias is not None, seen.weight
    weight = site.info["weight"]
    return weight.shape[1], weight.shape[0], site.info["bias"] is not None, weight


def _dense_of(site: Site) -> DenseMap:
    if site.source == "module":
        assert site.module is not None
        seen = linear_sources.view(site.module)
        return DenseMap(seen.weight.detach(), None if seen.bias is None else seen.bias.detach())
    bias = site.info["bias"]
    return DenseMap(site.info["weight"].detach(), None if bias is None else bias.detach())


class LinearRule(Rule):
    """Linear maps (:mod:`surgeon.surgery.linear_sources`: nn.Linear, F.linear, HF Conv1D and, with
    ``targets`` containing ``"conv1x1"``, pointwise convolutions) -> the structured layer ``config`` describes."""

    name = "linear"
    progress_label = "fitting structured layers"

    def __init__(self, config: LinearConfig, structure: LinearStructure,
                 calibration: Iterable[Any] | None = None) -> None:
        self.config, self.structure, self.calibration = config, structure, calibration
        self.module_types = linear_sources.module_types(config.targets)
        self.functions = (F.linear,) if "linear" in config.targets else ()
        self.layer = structure.layer
        self.depth: int | str | dict[str, int] | None = getattr(config, "depth", None) if structure.has_depth \
            else None
        self.unsupported = {nn.MultiheadAttention: _MHA_REASON, **_quantized_linear_types()}
        self.inputs: dict[str, torch.Tensor] = {}
        self.chosen_depth: dict[str, int] = {}
        self.errors: dict[str, float] = {}
        self.budget_sizes: dict[str, int] = {}
        self.context: SurgeryContext | None = None
        self.sequential = bool(config.sequential) if config.sequential is not None else calibration is not None
        self.progress: LazyProgress | None = None
        self.done = 0

    # -- matching ---------------------------------------------------------------------------------------------
    def matches_module(self, module: nn.Module, name: str) -> bool:
        return linear_sources.is_source(module, self.config.targets)

    def describe_module(self, module: nn.Module) -> str:
        if isinstance(getattr(module, "weight", None), UninitializedParameter):
            return f"{type(module).__name__}()"
        return linear_sources.describe(module)

    def describe_node(self, node: fx.Node) -> str:
        return "F.linear"

    def inspect_node(self, node: fx.Node, root: nn.Module) -> dict[str, Any] | str:
        try:
            bound = inspect.signature(lambda input, weight, bias=None: None).bind(*node.args, **node.kwargs)
        except TypeError:
            return "F.linear call with unexpected arguments"
        weight, bias = bound.arguments["weight"], bound.arguments.get("bias")
        params: dict[str, nn.Parameter] = {}
        values: dict[str, Any] = {}
        for label, arg in (("weight", weight), ("bias", bias)):
            if arg is None:
                values[label] = None
                continue
            if not isinstance(arg, fx.Node) or arg.op != "get_attr":
                return f"F.linear {label} is computed in forward, not a parameter"
            try:
                tensor = root.get_parameter(str(arg.target))
            except AttributeError:
                return f"F.linear {label} {arg.target} is a buffer or plain tensor, not a parameter"
            params[str(arg.target)] = tensor
            values[label] = tensor
        if values["weight"].dim() != 2:
            return f"F.linear weight {weight.target} is not a matrix"
        return {"key": str(weight.target), "params": params, "input": bound.arguments["input"], **values}

    def call_args(self, site: Site, node: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        first = node.args[0] if node.args else node.kwargs["input"]
        return (first,), {}

    # -- policy -----------------------------------------------------------------------------------------------
    def refuse(self, site: Site) -> str | None:
        if site.source != "module":
            return None
        module = site.module
        assert module is not None
        if isinstance(module.weight, UninitializedParameter):
            return "LazyLinear: its shape is unknown until the first forward; run a batch through the model first"
        if hasattr(module, "weight_fake_quant") or getattr(module, "qconfig", None) is not None:
            return "quantization-aware linear: converting would drop its fake-quantisation"
        return linear_sources.refusal(module)

    def decline(self, site: Site) -> str | None:
        in_features, out_features, bias, _ = _linear_shape(site)
        if self.config.skip_output and site.is_output:
            return ("output layer (its result is the model's output); the thesis keeps the classifier dense — "
                    "pass skip_output=False or include it by name to convert it")
        if min(in_features, out_features) < self.config.min_features:
            return f"min(in, out) = {min(in_features, out_features)} < min_features={self.config.min_features}"
        if self.depth != "auto" and self.config.budget is None:
            after = self._param_count(site, self._size_for(site))
            before = in_features * out_features + (out_features if bias else 0)
            if after >= before:
                return f"{self.layer.__name__} would hold {after} parameters, not fewer than the dense {before}"
        return None

    # -- building ---------------------------------------------------------------------------------------------
    def _param_count(self, site: Site, depth: int) -> int:
        in_features, out_features, bias, _ = _linear_shape(site)
        return self.structure.param_count(self.config, in_features, out_features, bias, depth)

    def _size_for(self, site: Site) -> int:
        """The depth or rank the layer at ``site`` gets (a budget's choice first)."""
        if site.name in self.budget_sizes:
            return self.budget_sizes[site.name]
        if self.structure.size_of is not None:
            in_features, out_features, bias, _ = _linear_shape(site)
            return self.structure.size_of(self.config, site.name, in_features, out_features, bias)
        return self._depth_for(site)

    def _depth_for(self, site: Site) -> int:
        if site.name in self.budget_sizes:
            return self.budget_sizes[site.name]
        if isinstance(self.depth, dict):
            return int(self.depth.get(site.name, DEFAULT_DEPTH))
        return int(self.depth) if isinstance(self.depth, int) else DEFAULT_DEPTH

    def _layer_seed(self, site: Site) -> int | None:
        return None if self.config.seed is None else int(self.config.seed) + site.index

    def _make(self, site: Site, depth: int) -> nn.Module:
        in_features, out_features, bias, weight = _linear_shape(site)
        kwargs = dict(self.structure.options(self.config, in_features, out_features), bias=bias,
                      seed=self._layer_seed(site), device=weight.device, dtype=weight.dtype)
        if self.structure.has_depth:
            kwargs["depth"] = depth
        if self.structure.size_of is not None:
            kwargs[self.structure.size_name] = self._size_for(site)
        return self.layer(in_features, out_features, **kwargs)

    def _depth_candidates(self, site: Site) -> list[int]:
        if self.depth != "auto" or self.config.budget is not None:
            return [self._depth_for(site)]
        in_features, out_features, bias, _ = _linear_shape(site)
        dense = in_features * out_features + (out_features if bias else 0)
        target_ratio = self.config.target_ratio
        budget = dense / target_ratio if target_ratio else dense
        fits = [k for k in AUTO_DEPTHS if self._param_count(site, k) < budget]
        if target_ratio and self.config.max_error is None:
            return fits[-1:] or [1]   # a budget alone: the deepest cascade it affords
        return fits or [1]

    def cost(self, site: Site) -> float:
        return float(len(self._depth_candidates(site))) if self.config.init == "fit" else 0.0

    def prepare(self, context: SurgeryContext) -> None:
        if self.config.init != "fit":
            return
        self.progress, self.done = context.progress, 0
        features = {s.name: _linear_shape(s)[0] for s in context.sites}
        rows = self.config.fit_rows
        self.context = context
        if self.calibration is not None:
            modules = {s.name: s.module for s in context.sites if s.source == "module"}
            calls = {s.name: s.nodes for s in context.sites if s.source != "module"}
            channels = {name: linear_sources.channel_dim(m) for name, m in modules.items() if m is not None}
            self.inputs = capture_inputs(context.root, context.graph, modules, calls, features,
                                         self.calibration, rows, channel_dims=channels)
        else:
            self.inputs = {s.name: probe_inputs(features[s.name], rows, self._layer_seed(s)) for s in context.sites}
        if self.config.budget is not None:
            self.budget_sizes = self._spend_budget(context.sites)

    def _spend_budget(self, sites: list[Site]) -> dict[str, int]:
        """Per-layer sizes keeping about ``budget`` of the sites' dense parameters, by measured sensitivity."""
        curves: dict[str, list[tuple[int, int, float]]] = {}
        dense_total = 0
        for site in sites:
            in_features, out_features, bias, _ = _linear_shape(site)
            dense = in_features * out_features + (out_features if bias else 0)
            dense_total += dense
            curves[site.name] = [(size, params, error) for size, params, error in self._curve(site)
                                 if params < dense]
        return allocate(curves, self.config.budget * dense_total)

    def _curve(self, site: Site) -> list[tuple[int, int, float]]:
        """(size, parameters, held-out error) for the sizes this layer could take."""
        in_features, out_features, bias, _ = _linear_shape(site)
        dense = _dense_of(site)
        rows = self.inputs[site.name]
        if isinstance(self.config, LowRankConfig):
            train, held = split(rows)
            errors = rank_curve(Moments.of(train, dense(train)), bias)
            return [(r + 1, self._param_count(site, r + 1), e) for r, e in enumerate(errors)]
        if not self.structure.has_depth:
            return []
        curve = []
        for depth in AUTO_DEPTHS:
            layer = self._make(site, depth)
            quick = fit_layer(layer, dense, rows, sweeps=BUDGET_SWEEPS)
            curve.append((depth, self._param_count(site, depth), quick.error))
        return curve

    def _fit(self, site: Site, layer: nn.Module, label: str) -> float:
        progress, base = self.progress, self.done

        def tick(fraction: float) -> None:
            if progress is not None:
                progress.update(base + fraction, description=f"fitting {site.name} ({label})")

        dense = _dense_of(site)
        inputs, targets = self.inputs[site.name], None
        if self.sequential:
            # the rows this layer receives in the partly converted model, against the dense model's outputs
            targets, inputs = dense(inputs), self._current_inputs(site)
        result = fit_layer(layer, dense, inputs, steps=self.config.fit_steps, seed=self._layer_seed(site),
                           tick=tick, targets=targets, sweeps=self.config.fit_sweeps)
        self.done += 1
        return result.error

    def _current_inputs(self, site: Site) -> torch.Tensor:
        context = self.context
        assert context is not None and self.calibration is not None
        modules = {site.name: site.module} if site.source == "module" else {}
        calls = {} if site.source == "module" else {site.name: site.nodes}
        channels = {name: linear_sources.channel_dim(m) for name, m in modules.items() if m is not None}
        return capture_inputs(context.root, context.graph, modules, calls, {site.name: _linear_shape(site)[0]},
                              self.calibration, self.config.fit_rows, channel_dims=channels)[site.name]

    def _plain_svd(self, site: Site, layer: nn.Module) -> float:
        """Data-free low-rank init: the truncated SVD of the weight (best rank-r map in Frobenius norm)."""
        dense = _dense_of(site)
        plain = LowRankLinear.from_dense(dense.weight, dense.bias, layer.rank)
        layer.load_factors(plain.u.detach(), plain.v.detach(), plain.bias)
        self.done += 1
        return relative_error(layer, dense, split(self.inputs[site.name])[1])

    def build(self, site: Site) -> Replacement:
        built = self._build_map(site)
        if site.source == "module":
            assert site.module is not None
            built.module = linear_sources.wrap(site.module, built.module)
        return built

    def _build_map(self, site: Site) -> Replacement:
        """The structured (..., in) -> (..., out) map for ``site``, before any channel-axis wrapping."""
        if self.config.init != "fit":
            return Replacement(self._make(site, self._depth_for(site)))
        if self.depth != "auto" or self.config.budget is not None:
            layer = self._make(site, self._depth_for(site))
            if isinstance(layer, LowRankLinear) and self.calibration is None:
                error = self._plain_svd(site, layer)
            else:
                error = self._fit(site, layer, self.layer.__name__)
            self.errors[site.name] = error
            return Replacement(layer, fit_error=error, note=self._tolerance_note(error, layer, site))
        max_error = self.config.max_error
        tried: list[tuple[int, float, nn.Module]] = []
        for depth in self._depth_candidates(site):
            layer = self._make(site, depth)
            error = self._fit(site, layer, f"depth {depth}")
            tried.append((depth, error, layer))
            if max_error is not None and error <= max_error:
                break
        met = max_error is not None and tried[-1][1] <= max_error
        depth, error, layer = tried[-1] if met else min(tried, key=lambda t: t[1])
        self.chosen_depth[site.name], self.errors[site.name] = depth, error
        listing = ", ".join(f"{k}: {e:.3g}" for k, e, _ in tried)
        if max_error is not None and error > max_error:
            note = (f"no depth met max_error={max_error} (held-out error by depth {listing}); "
                    f"kept the best, depth {depth}")
        else:
            goal = f"max_error={max_error}" if max_error is not None else f"target_ratio={self.config.target_ratio}"
            note = f"depth {depth} chosen automatically for {goal} (held-out error by depth {listing})"
        return Replacement(layer, fit_error=error, note=note)

    def _tolerance_note(self, error: float, layer: nn.Module, site: Site) -> str:
        in_features, out_features, bias, _ = _linear_shape(site)
        dense_params = in_features * out_features + (out_features if bias else 0)
        notes = []
        if self.config.max_error is not None and error > self.config.max_error:
            notes.append(f"held-out error {error:.3g} exceeds max_error={self.config.max_error}")
        ratio = dense_params / max(1, sum(p.numel() for p in layer.parameters()))
        if self.config.target_ratio is not None and ratio < self.config.target_ratio:
            notes.append(f"compression ×{ratio:.2f} is below target_ratio={self.config.target_ratio}")
        return "; ".join(notes)

    def finish(self) -> list[Warning]:
        self.progress = None
        max_error = self.config.max_error
        missed = [name for name, error in self.errors.items() if max_error is not None and error > max_error]
        if not missed:
            return []
        return [FitWarning(f"convert: {len(missed)} layer(s) missed max_error={max_error}: {', '.join(missed)}")]

    def recorded_config(self, config: TransformConfig) -> TransformConfig:
        # Replaying with init="random" cannot re-run the depth search: record the depths it found.
        if self.budget_sizes and self.structure.has_depth:
            return config.replace(depth=dict(self.budget_sizes), budget=None)
        if self.depth == "auto":
            return config.replace(depth=dict(self.chosen_depth))
        if isinstance(config, LowRankConfig) and self.context is not None:
            # the ranks a ratio or budget resolved to, per layer, so that replay rebuilds the same shapes
            ranks = {s.name: self._size_for(s) for s in self.context.sites}
            return config.replace(rank=ranks, ratio=None, budget=None)
        return config


def _convert_with(model: nn.Module, config: LinearConfig, call: Call) -> nn.Module:
    if call.calibration is not None and config.init != "fit":
        raise ConfigError("calibration is only used with init='fit'", field="calibration",
                          rule="is only used with init='fit'")
    if config.sequential and call.calibration is None:
        raise ConfigError("sequential fitting needs calibration batches", field="sequential",
                          rule="needs calibration batches")
    calibration = call.calibration
    if calibration is not None and config.init == "fit" and config.sequential is not False \
            and iter(calibration) is calibration:
        calibration = list(calibration)   # a one-shot iterator: sequential fitting runs the batches once per layer
    rule = LinearRule(config, STRUCTURES[type(config)], calibration)
    return apply_surgery(model, [rule], config=config, **call.selection(), inplace=call.inplace, quiet=call.quiet)


register_linear(ACDCConfig, LinearStructure(
    ACDCLinear, lambda c, _in, _out: {"activation": c.activation, "permute": c.permute, "init_std": c.init_std},
    _acdc_params, has_depth=True))
register_linear(FastfoodConfig, LinearStructure(FastfoodLinear, lambda c, _in, _out: {"adaptive": c.adaptive},
                                                _fastfood_params))
register_linear(LowRankConfig, LinearStructure(LowRankLinear, lambda c, _in, _out: {}, _lowrank_params,
                                               size_of=_lowrank_rank, size_name="rank"))


def convert(model: nn.Module, linear: LinearConfig | str = "acdc", *, include: Pattern = None,
            exclude: Pattern = None, filter_fn: FilterFn | None = None, calibration: Iterable[Any] | None = None,
            inplace: bool = False, quiet: bool = False, **options: Any) -> nn.Module:
    """Replace the model's linear layers (``nn.Linear`` modules, ``F.linear`` calls on parameters) with
    structured ones: ``linear`` is a config — :class:`~surgeon.configs.ACDCConfig` (ACDC cascades, eq. 3.24),
    :class:`~surgeon.configs.FastfoodConfig` (Adaptive Fastfood, §3.9) — or the name of one (``"acdc"``,
    ``"fastfood"``) with its fields as keyword ``options``: ``convert(model, "acdc", depth=12)`` is
    ``convert(model, ACDCConfig(depth=12))``. The configs document every option.

    Shapes are unchanged: a Linear(in, out) becomes a layer mapping (..., in) -> (..., out). ``targets``
    (default ``("linear",)``: ``nn.Linear``, ``F.linear`` calls, Hugging Face ``Conv1D``) may add ``"conv1x1"``:
    1×1 ``nn.Conv1d/2d/3d`` with ``groups=1`` and no padding become a structured map over channels
    (:class:`~surgeon.layers.pointwise.PointwiseConv`; a stride subsamples first), for any input layout the
    convolution accepts.

    Selection (see :mod:`surgeon.surgery.select`): ``include`` / ``exclude`` regexes or name lists, ``filter_fn(module,
    name)``. By default two kinds of layer stay dense, each recorded as a skip with its reason: the output layer
    (``skip_output``) and layers with ``min(in, out) < min_features``; layers the replacement would not shrink are
    skipped too. Naming a layer in an ``include`` list overrides these defaults.

    ``init="random"``: the thesis's train-from-scratch setting (identity-plus-noise diagonals, §3.10.7.1).
    ``init="fit"``: fit each replacement to its dense layer, on ``calibration`` batches (an iterable of model
    inputs: a tensor, a tuple of positional args or a dict of keyword args per batch; each layer's real inputs are
    captured with forward hooks in eval mode) or, without calibration, on standard-normal probes. The held-out
    relative error ``‖Wx − Φ(x)‖/‖Wx‖`` goes to ``Change.fit_error``; a layer missing ``max_error`` gets a
    :class:`~surgeon.errors.FitWarning`. ``depth="auto"`` searches the depth per layer, and the record stores
    the depths it chose, so replaying it rebuilds the same structure. ``quiet`` hides the fitting progress bar.

    Returns the model with its class kept, or an ``fx.GraphModule`` when F.linear calls had to be rewritten.
    """
    config = make_config("convert", linear, options, "linear")
    return run_transform(model, config, Call(include, exclude, filter_fn, calibration, inplace, quiet))
