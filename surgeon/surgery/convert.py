"""``convert``: replace ``nn.Linear`` modules and ``F.linear`` calls with ACDC or Adaptive Fastfood layers.

Thesis §3.9 (Fastfood, ``y = S H G Π H B x``) and §3.10 (ACDC cascades, eq. 3.24 ``Φ = Π_k A_k C D_k C⁻¹``).
The walking, selection, fallback and records are the shared engine's (:mod:`surgeon.surgery.engine`); this
module only says which sites are linear layers, which of them to leave alone, and how to build and fit the
structured replacement.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.parameter import UninitializedParameter

from surgeon.errors import ConfigError, FitWarning
from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.surgery import linear_sources
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.fit import DenseMap, capture_inputs, fit_layer, probe_inputs
from surgeon.surgery.progress import LazyProgress
from surgeon.surgery.rules import Replacement, Rule, Site, SurgeryContext
from surgeon.surgery.select import FilterFn, Pattern

LAYERS: dict[str, type[nn.Module]] = {"acdc": ACDCLinear, "fastfood": FastfoodLinear}
AUTO_DEPTHS = (1, 2, 4, 8, 12, 16, 24, 32)
DEFAULT_DEPTH = 12
DEFAULT_MIN_FEATURES = 64
_MHA_REASON = ("its packed in-projection (in_proj_weight) and out_proj are applied by "
               "F.multi_head_attention_forward, which reads the weights directly; a replacement would be ignored")


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


def _param_count(kind: str, in_features: int, out_features: int, bias: bool, depth: int,
                 layer_kwargs: dict[str, Any]) -> int:
    """Parameters of the replacement, without building it."""
    if kind == "acdc":
        size = max(in_features, out_features)
        return depth * size * (3 if bias else 2)
    d = 1 << max(0, (in_features - 1).bit_length())
    blocks = -(-out_features // d)
    return (3 * blocks * d if layer_kwargs.get("adaptive", True) else 0) + (out_features if bias else 0)


class LinearRule(Rule):
    """Linear maps (see :mod:`surgeon.surgery.linear_sources`) -> ACDCLinear / FastfoodLinear."""

    name = "linear"

    def __init__(self, kind: str, *, depth: int | str | dict[str, int], min_features: int, skip_output: bool,
                 init: str, calibration: Iterable[Any] | None, seed: int | None, max_error: float | None,
                 target_ratio: float | None, fit_steps: int, fit_rows: int, quiet: bool,
                 layer_kwargs: dict[str, Any], targets: tuple[str, ...] = linear_sources.DEFAULT_TARGETS) -> None:
        self.targets = targets
        self.module_types = linear_sources.module_types(targets)
        self.functions = (F.linear,) if "linear" in targets else ()
        self.kind, self.layer = kind, LAYERS[kind]
        self.depth, self.min_features, self.skip_output = depth, min_features, skip_output
        self.init, self.calibration, self.seed = init, calibration, seed
        self.max_error, self.target_ratio = max_error, target_ratio
        self.fit_steps, self.fit_rows, self.quiet = fit_steps, fit_rows, quiet
        self.layer_kwargs = layer_kwargs
        self.unsupported = {nn.MultiheadAttention: _MHA_REASON, **_quantized_linear_types()}
        self.inputs: dict[str, torch.Tensor] = {}
        self.chosen_depth: dict[str, int] = {}
        self.progress: LazyProgress | None = None
        self.done = 0

    # -- matching ---------------------------------------------------------------------------------------------
    def matches_module(self, module: nn.Module, name: str) -> bool:
        return linear_sources.is_source(module, self.targets)

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
        if self.skip_output and site.is_output:
            return ("output layer (its result is the model's output); the thesis keeps the classifier dense — "
                    "pass skip_output=False or include it by name to convert it")
        if min(in_features, out_features) < self.min_features:
            return f"min(in, out) = {min(in_features, out_features)} < min_features={self.min_features}"
        if self.depth != "auto":
            after = _param_count(self.kind, in_features, out_features, bias, self._depth_for(site), self.layer_kwargs)
            before = in_features * out_features + (out_features if bias else 0)
            if after >= before:
                return f"{self.layer.__name__} would hold {after} parameters, not fewer than the dense {before}"
        return None

    # -- building ---------------------------------------------------------------------------------------------
    def _depth_for(self, site: Site) -> int:
        if isinstance(self.depth, dict):
            return int(self.depth.get(site.name, DEFAULT_DEPTH))
        return DEFAULT_DEPTH if self.depth == "auto" else int(self.depth)

    def _layer_seed(self, site: Site) -> int | None:
        return None if self.seed is None else int(self.seed) + site.index

    def _make(self, site: Site, depth: int) -> nn.Module:
        in_features, out_features, bias, weight = _linear_shape(site)
        kwargs = dict(self.layer_kwargs, bias=bias, seed=self._layer_seed(site), device=weight.device,
                      dtype=weight.dtype)
        if self.kind == "acdc":
            kwargs["depth"] = depth
        return self.layer(in_features, out_features, **kwargs)

    def prepare(self, context: SurgeryContext) -> None:
        if self.init != "fit":
            return
        features = {s.name: _linear_shape(s)[0] for s in context.sites}
        if self.calibration is not None:
            modules = {s.name: s.module for s in context.sites if s.source == "module"}
            calls = {s.name: s.nodes for s in context.sites if s.source != "module"}
            channels = {name: linear_sources.channel_dim(m) for name, m in modules.items() if m is not None}
            self.inputs = capture_inputs(context.root, context.graph, modules, calls, features,
                                         self.calibration, self.fit_rows, channel_dims=channels)
        else:
            self.inputs = {name: probe_inputs(n, self.fit_rows, self._layer_seed(s))
                           for s in context.sites for name, n in [(s.name, features[s.name])]}
        trials = len(self._depth_candidates(context.sites[0])) if self.depth == "auto" else 1
        self.progress = LazyProgress(len(context.sites) * trials, "fitting structured layers", quiet=self.quiet)
        self.progress.__enter__()
        self.done = 0

    def _depth_candidates(self, site: Site) -> list[int]:
        in_features, out_features, bias, _ = _linear_shape(site)
        if self.kind != "acdc":
            return [0]
        dense = in_features * out_features + (out_features if bias else 0)
        budget = dense / self.target_ratio if self.target_ratio else dense
        fits = [k for k in AUTO_DEPTHS if _param_count("acdc", in_features, out_features, bias, k, {}) < budget]
        if self.target_ratio and self.max_error is None:
            return fits[-1:] or [1]   # a budget alone: the deepest cascade it affords
        return fits or [1]

    def _fit(self, site: Site, layer: nn.Module, label: str) -> float:
        progress = self.progress
        base = self.done

        def tick(fraction: float) -> None:
            if progress is not None:
                progress.update(base + fraction, description=f"fitting {site.name} ({label})")

        result = fit_layer(layer, _dense_of(site), self.inputs[site.name], steps=self.fit_steps,
                           seed=self._layer_seed(site), tick=tick)
        self.done += 1
        return result.error

    def build(self, site: Site) -> Replacement:
        built = self._build_map(site)
        if site.source == "module":
            assert site.module is not None
            built.module = linear_sources.wrap(site.module, built.module)
        return built

    def _build_map(self, site: Site) -> Replacement:
        """The structured (..., in) -> (..., out) map for ``site``, before any channel-axis wrapping."""
        if self.init != "fit":
            return Replacement(self._make(site, self._depth_for(site)))
        in_features, out_features, bias, _ = _linear_shape(site)
        dense_params = in_features * out_features + (out_features if bias else 0)
        if self.kind != "acdc" or self.depth != "auto":
            layer = self._make(site, self._depth_for(site))
            error = self._fit(site, layer, self.layer.__name__)
            note = self._tolerance_note(error, layer, dense_params)
            return Replacement(layer, fit_error=error, note=note)
        tried: list[tuple[int, float, nn.Module]] = []
        for depth in self._depth_candidates(site):
            layer = self._make(site, depth)
            error = self._fit(site, layer, f"depth {depth}")
            tried.append((depth, error, layer))
            if self.max_error is not None and error <= self.max_error:
                break
        depth, error, layer = min(tried, key=lambda t: t[1]) if not (
            self.max_error is not None and tried[-1][1] <= self.max_error) else tried[-1]
        self.chosen_depth[site.name] = depth
        listing = ", ".join(f"{k}: {e:.3g}" for k, e, _ in tried)
        if self.max_error is not None and error > self.max_error:
            note = (f"no depth met max_error={self.max_error} (held-out error by depth {listing}); "
                    f"kept the best, depth {depth}")
        else:
            goal = f"max_error={self.max_error}" if self.max_error is not None else f"target_ratio={self.target_ratio}"
            note = f"depth {depth} chosen automatically for {goal} (held-out error by depth {listing})"
        return Replacement(layer, fit_error=error, note=note)

    def _tolerance_note(self, error: float, layer: nn.Module, dense_params: int) -> str:
        notes = []
        if self.max_error is not None and error > self.max_error:
            notes.append(f"held-out error {error:.3g} exceeds max_error={self.max_error}")
        ratio = dense_params / max(1, sum(p.numel() for p in layer.parameters()))
        if self.target_ratio is not None and ratio < self.target_ratio:
            notes.append(f"compression ×{ratio:.2f} is below target_ratio={self.target_ratio}")
        if self.kind != "acdc" and self.depth == "auto":
            notes.append("depth does not apply to Fastfood; fitted its single structure")
        return "; ".join(notes)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


def _check_layer_kwargs(kind: str, layer_kwargs: dict[str, Any]) -> None:
    allowed = set(inspect.signature(LAYERS[kind].__init__).parameters) - {
        "self", "in_features", "out_features", "depth", "bias", "seed", "device", "dtype"}
    unknown = sorted(set(layer_kwargs) - allowed)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for {LAYERS[kind].__name__}; "
                          f"allowed: {', '.join(sorted(allowed)) or '(none)'}")


def convert(model: nn.Module, linear: str = "acdc", *, depth: int | str | dict[str, int] = DEFAULT_DEPTH,
            include: Pattern = None, exclude: Pattern = None, filter_fn: FilterFn | None = None,
            min_features: int = DEFAULT_MIN_FEATURES, skip_output: bool = True, init: str = "random",
            calibration: Iterable[Any] | None = None, inplace: bool = False, seed: int | None = None,
            max_error: float | None = None, target_ratio: float | None = None, fit_steps: int = 300,
            fit_rows: int = 2048, quiet: bool = False, targets: Iterable[str] | None = None,
            **layer_kwargs: Any) -> nn.Module:
    """Replace the model's linear layers (``nn.Linear`` modules, ``F.linear`` calls on parameters) with
    structured ones: ``linear="acdc"`` (:class:`ACDCLinear`, ``depth`` factors, eq. 3.24) or ``"fastfood"``
    (:class:`FastfoodLinear`, §3.9; ``depth`` does not apply).

    Shapes are unchanged: a Linear(in, out) becomes a layer mapping (..., in) -> (..., out).

    Selection (see :mod:`surgeon.surgery.select`): ``include`` / ``exclude`` regexes or name lists, ``filter_fn(module,
    name)``. By default two kinds of layer stay dense, each recorded as a skip with its reason: the output layer
    (the thesis replaced the hidden FC layers and kept the classifier dense; ``skip_output=False`` converts it) and
    layers with ``min(in, out) < min_features``. The default 64 is where an ACDC cascade of depth 12 stops paying
    off: it holds 3·12·N numbers, which is fewer than the dense in·out only when min(in, out) > 36, and below 64
    the saving is small while the layer's share of FLOPs is negligible. Layers the replacement would not shrink are
    skipped too. Naming a layer in an ``include`` list overrides these defaults.

    ``init="random"``: the thesis's train-from-scratch setting (identity-plus-noise diagonals, §3.10.7.1).
    ``init="fit"``: fit each replacement to its dense layer, on ``calibration`` batches (an iterable of model
    inputs: a tensor, a tuple of positional args or a dict of keyword args per batch; each layer's real inputs are
    captured with forward hooks in eval mode) or, without calibration, on standard-normal probes. The held-out
    relative error ``‖Wx − Φ(x)‖/‖Wx‖`` goes to ``Change.fit_error``. ACDC cascades fitted this way default to
    ``activation=None`` (a linear cascade can imitate a linear map; pass ``activation=`` to override).

    ``depth="auto"`` (with ``init="fit"``) tries depths 1, 2, 4, 8, 12, 16, 24, 32 per layer and keeps the smallest
    whose held-out error is ≤ ``max_error``; with ``target_ratio`` only depths compressing the layer at least that
    much are tried (alone, it picks the deepest such). When no depth meets the tolerance the best one is kept and
    ``Change.note`` says so. ``depth`` may also be a mapping {layer name: depth} (missing names use 12): the
    record stores the depths auto chose this way, so replaying it rebuilds the same structure.

    Other keyword arguments go to the layer (ACDC: ``activation``, ``permute``, ``init_std``; Fastfood:
    ``adaptive``). ``seed`` makes every layer reproducible: the layer at candidate index i gets seed + i.

    ``targets`` (default ``{"linear"}``: ``nn.Linear``, ``F.linear`` calls, Hugging Face ``Conv1D``) may add
    ``"conv1x1"``: 1×1 ``nn.Conv1d/2d/3d`` with ``groups=1`` and no padding become a structured map over channels
    (:class:`~surgeon.layers.pointwise.PointwiseConv`; a stride subsamples first), for (N, C, *S) and unbatched
    inputs alike.
    Returns the model with its class kept, or an ``fx.GraphModule`` when F.linear calls had to be rewritten.
    """
    if linear not in LAYERS:
        raise ConfigError(f"linear must be one of {', '.join(LAYERS)}, got {linear!r}")
    if init not in ("random", "fit"):
        raise ConfigError(f"init must be 'random' or 'fit', got {init!r}")
    _check_layer_kwargs(linear, layer_kwargs)
    chosen_targets = linear_sources.parse_targets(targets)
    if isinstance(depth, str) and depth != "auto":
        raise ConfigError(f"depth must be an integer, 'auto' or a mapping of layer names to integers, got {depth!r}")
    if depth == "auto" and init != "fit":
        raise ConfigError("depth='auto' chooses depths by fitting; use it with init='fit'")
    if depth == "auto" and linear == "acdc" and max_error is None and target_ratio is None:
        raise ConfigError("depth='auto' needs max_error (a tolerance) or target_ratio (a compression ratio)")
    for label, value in (("max_error", max_error), ("target_ratio", target_ratio)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{label} must be a positive number, got {value!r}")
    if not isinstance(min_features, int) or min_features < 0:
        raise ConfigError(f"min_features must be a non-negative integer, got {min_features!r}")
    if calibration is not None and init != "fit":
        raise ConfigError("calibration is only used with init='fit'")
    if linear == "acdc" and "activation" not in layer_kwargs:
        layer_kwargs["activation"] = None if init == "fit" else "relu"
    rule = LinearRule(linear, depth=depth, min_features=min_features, skip_output=skip_output, init=init,
                      calibration=calibration, seed=seed, max_error=max_error, target_ratio=target_ratio,
                      fit_steps=fit_steps, fit_rows=fit_rows, quiet=quiet, layer_kwargs=dict(layer_kwargs),
                      targets=chosen_targets)
    arguments: dict[str, Any] = {"linear": linear, "depth": depth, "min_features": min_features,
                                 "skip_output": skip_output, "seed": seed, "targets": list(chosen_targets),
                                 **layer_kwargs}
    try:
        result = apply_surgery(model, [rule], transform_name="convert", arguments=arguments, include=include,
                               exclude=exclude, filter_fn=filter_fn, inplace=inplace)
    finally:
        rule.finish()
    record = result.surgeon_records[-1]
    if depth == "auto":
        # Replaying with init="random" cannot re-run the search: store the depths it found.
        record.arguments["depth"] = {c.name: c.config.get("depth", DEFAULT_DEPTH) for c in record.changes}
    missed = [c.name for c in record.changes if max_error is not None and c.fit_error is not None
              and c.fit_error > max_error]
    if missed:
        message = f"convert: {len(missed)} layer(s) missed max_error={max_error}: {', '.join(missed)}"
        record.warnings.append(message)
        warnings.warn(message, FitWarning, stacklevel=2)
    return result
