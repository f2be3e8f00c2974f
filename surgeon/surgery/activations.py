"""The activation-site toolkit that ``noisify`` and ``mollify`` share.

What each activation kind looks like in a model (modules, functions, tensor methods), which recurrent modules
have noisy counterparts, which noise modules must stay torch.fx leaves (and are never transformed twice), how
the number of units of an activation site is read off the model (so per-unit parameters are sized at surgery
time and a checkpoint loads strictly), the execution order of sites (for the layer numbers of eq. 4.31), and
:class:`ActivationRule`, the base of both transforms' rules.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgeon.noise.base import NoiseModule
from surgeon.noise.mollified import MollifiedActivation
from surgeon.noise.noisy import NoisyHardSigmoid, NoisyHardTanh
from surgeon.noise.recurrent import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell
from surgeon.surgery.rules import Rule, Site, SurgeryContext

# -- what each activation kind looks like in a model --------------------------------------------------------------
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
ACTIVATION_FUNCTIONS: dict[str, tuple[Callable[..., Any], ...]] = {
    "sigmoid": (torch.sigmoid, F.sigmoid, torch.special.expit),
    "tanh": (torch.tanh, F.tanh),
    "relu": (torch.relu, F.relu),
}
ACTIVATION_METHODS: dict[str, str] = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}

RECURRENT: dict[type[nn.Module], type[nn.Module]] = {
    nn.LSTM: NoisyLSTM, nn.GRU: NoisyGRU, nn.LSTMCell: NoisyLSTMCell, nn.GRUCell: NoisyGRUCell,
}

# A model that already went through noisify / mollify (or a checkpoint replaying both) contains noise modules
# whose forward has data-dependent control flow; torch.fx must treat them as leaves or the whole trace fails.
# Declaring them ``unsupported`` makes the engine keep them as leaves and leave them (and what they contain)
# alone, which is also the right policy: a noisy unit is not noisified twice.
ALREADY_NOISY_REASON = "already a noise module; surgeon does not noisify or mollify it twice"
NOISE_LEAVES: dict[type[nn.Module], str] = {
    NoiseModule: ALREADY_NOISY_REASON,
    NoisyLSTM: ALREADY_NOISY_REASON, NoisyGRU: ALREADY_NOISY_REASON,
    NoisyLSTMCell: ALREADY_NOISY_REASON, NoisyGRUCell: ALREADY_NOISY_REASON,
}

# Modules and calls that keep the unit axis of their input (used to find the layer that fixes it).
_PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Hardtanh, nn.Hardsigmoid,
    NoisyHardSigmoid, NoisyHardTanh, MollifiedActivation,
)
_ELEMENTWISE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    *ACTIVATION_FUNCTIONS["sigmoid"], *ACTIVATION_FUNCTIONS["tanh"], *ACTIVATION_FUNCTIONS["relu"],
    F.dropout, F.gelu, F.silu, F.leaky_relu, F.hardtanh, torch.add, torch.sub, torch.mul,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.neg,
)
_ELEMENTWISE_METHODS = frozenset({"sigmoid", "tanh", "relu", "contiguous", "clone", "neg", "add", "sub", "mul",
                                  "div", "detach"})

Units = tuple[int | None, int, bool]   # (num_features, unit_dim, shared)
# When the unit count cannot be read off the model, one scalar parameter serves all units. A lazily sized
# per-unit parameter is not an option at surgery time: the engine counts the replacement's parameters and a
# checkpoint copies into them, and both need a shape (see the report on lazy modules in the docstring).
SHARED: Units = (None, -1, True)


def module_units(module: nn.Module) -> tuple[int, int] | None:
    """(units, unit_dim) of the output of a layer that fixes its unit axis, or None."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        return int(module.out_channels), 1
    if isinstance(module, nn.modules.batchnorm._NormBase):   # BatchNorm*d and InstanceNorm*d: (N, C, ...)
        return (int(module.num_features), 1) if module.num_features else None
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels), 1
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1]), -1
    if isinstance(module, nn.Embedding):
        return int(module.embedding_dim), -1
    if isinstance(module, (nn.GRUCell, NoisyGRUCell)):
        return int(module.hidden_size), -1
    out = getattr(module, "out_features", None)       # nn.Linear, LazyLinear, ACDCLinear, FastfoodLinear, ...
    if isinstance(out, int) and out > 0:
        return out, -1
    return None


def _recurrent_output_units(module: nn.Module, index: Any) -> tuple[int, int] | None:
    """Units of ``module(...)[index]`` for the recurrent modules whose result is a tuple."""
    if isinstance(module, (nn.LSTM, nn.GRU, NoisyLSTM, NoisyGRU)) and index == 0:
        proj = int(getattr(module, "proj_size", 0) or 0)
        return (proj or int(module.hidden_size)) * (2 if module.bidirectional else 1), -1
    if isinstance(module, (nn.LSTMCell, NoisyLSTMCell)) and index in (0, 1):
        return int(module.hidden_size), -1
    return None


def node_units(node: fx.Node, root: nn.Module, depth: int = 0) -> tuple[int, int] | None:
    """(units, unit_dim) of the tensor ``node`` computes, read off the graph without running the model.

    Walks back through unit-preserving modules and elementwise calls to the layer that fixes the unit axis
    (Linear/Conv/norm/Embedding/recurrent output, or ``F.linear`` with a parameter weight); None if unknown.
    """
    modules = dict(root.named_modules())
    while depth < 64:
        depth += 1
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if module is None:
                return None
            found = module_units(module)
            if found is not None:
                return found
            if isinstance(module, _PASSTHROUGH_MODULES) and node.args and isinstance(node.args[0], fx.Node):
                node = node.args[0]
                continue
            return None
        if node.op == "call_function" and node.target is operator.getitem:
            source = node.args[0]
            if isinstance(source, fx.Node) and source.op == "call_module" and str(source.target) in modules:
                return _recurrent_output_units(modules[str(source.target)], node.args[1])
            return None
        if node.op == "call_function" and node.target is F.linear:
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                try:
                    return int(root.get_parameter(str(weight.target)).shape[0]), -1
                except AttributeError:
                    return None
            return None
        elementwise = (node.op == "call_function" and any(node.target is f for f in _ELEMENTWISE_FUNCTIONS)) or (
            node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)
        if not elementwise:
            return None
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        if len(inputs) == 1:
            node = inputs[0]
            continue
        # A binary op (x + y): every tensor operand that has a known unit axis must agree.
        found_all = {node_units(a, root, depth) for a in inputs} - {None}
        return found_all.pop() if len(found_all) == 1 else None
    return None


def _sibling_units(name: str, root: nn.Module) -> tuple[int, int] | None:
    """Without a graph: the units of the nearest preceding sizing layer among a Sequential's children."""
    owner, _, attr = name.rpartition(".")
    try:
        parent = root.get_submodule(owner)
    except AttributeError:
        return None
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent.named_children())
    keys = [k for k, _ in children]
    if attr not in keys:
        return None
    for _, module in reversed(children[: keys.index(attr)]):
        found = module_units(module)
        if found is not None:
            return found
        if not isinstance(module, _PASSTHROUGH_MODULES):
            return None
    return None


def call_input(node: fx.Node) -> fx.Node | None:
    """The tensor a unary call / call_module acts on (first argument, or ``input=``)."""
    first = node.args[0] if node.args else node.kwargs.get("input")
    return first if isinstance(first, fx.Node) else None


def site_units(site: Site, root: nn.Module, graph: fx.Graph | None) -> Units:
    """How to size the per-unit parameters of the replacement of an activation ``site``.

    Every call of the site must agree on the unit count. A module called with different sizes (e.g. one
    ``self.relu`` reused across a ResNet bottleneck), or a site whose size cannot be read off the model (a bare
    call on a computed tensor, a module outside a Sequential when fx cannot trace), gets ``shared=True``: one
    scalar for all units. (Lazy per-unit sizing would need ``apply_surgery`` to count parameters of lazy modules
    and ``surgeon.io.checkpoint.load`` to materialise them; neither does today.)
    """
    if site.source == "module":
        nodes = [] if graph is None else [n for n in graph.nodes
                                          if n.op == "call_module" and str(n.target) in site.names]
        if not nodes:
            found = _sibling_units(site.name, root)
            return SHARED if found is None else (found[0], found[1], False)
    else:
        nodes = list(site.nodes)
    sizes: set[tuple[int, int] | None] = set()
    for node in nodes:
        source = call_input(node)
        sizes.add(None if source is None else node_units(source, root))
    only = next(iter(sizes)) if len(sizes) == 1 else None
    return SHARED if only is None else (only[0], only[1], False)


def execution_order(sites: Sequence[Site], graph: fx.Graph | None) -> list[Site]:
    """``sites`` in the order the forward pass reaches them (graph order; module order without a graph)."""
    if graph is None:
        return sorted(sites, key=lambda s: s.index)
    first_call: dict[str, int] = {}
    position: dict[fx.Node, int] = {}
    for i, node in enumerate(graph.nodes):
        position[node] = i
        if node.op == "call_module":
            first_call.setdefault(str(node.target), i)

    def key(site: Site) -> tuple[float, int]:
        if site.source == "module":
            hits = [first_call[n] for n in site.names if n in first_call]
        else:
            hits = [position[n] for n in site.nodes if n in position]
        return (min(hits) if hits else math.inf, site.index)

    return sorted(sites, key=key)


def activation_kind(site: Site, kinds: Sequence[str]) -> str:
    """Which activation (``"sigmoid"``, ``"tanh"``, ``"relu"``) an activation site applies."""
    for kind in kinds:
        if site.source == "module" and isinstance(site.module, ACTIVATION_MODULES[kind]):
            return kind
        for node in site.nodes:
            if node.op == "call_method" and node.target == ACTIVATION_METHODS[kind]:
                return kind
            if node.op == "call_function" and any(node.target is f for f in ACTIVATION_FUNCTIONS[kind]):
                return kind
    raise AssertionError(f"site {site.name} is not one of {kinds}")  # pragma: no cover - guarded by matching


def overridden_forward(module: nn.Module) -> str | None:
    """A subclass of a torch activation / RNN with its own forward cannot be replaced faithfully."""
    for base in (*ACTIVATION_MODULES.values(), *RECURRENT):
        if isinstance(module, base) and type(module).forward is not base.forward:
            return f"{type(module).__name__} overrides {base.__name__}.forward; replacing it would drop its behaviour"
    return None


def recurrent_refusal(module: nn.Module) -> str | None:
    if getattr(module, "proj_size", 0):
        return "LSTM with proj_size > 0: the noisy recurrent modules do not implement the projection"
    return overridden_forward(module)


def reference_device(root: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer: parameter-free activations are built there."""
    for tensor in (*root.parameters(), *root.buffers()):
        return tensor.device
    return None


class ActivationRule(Rule):
    """What noisify and mollify share: the sites of activations ``kinds`` (modules, calls, methods) and, with
    ``recurrent``, LSTM/GRU modules and cells; noise modules stay untouched leaves. Activation call sites take only
    their tensor; recurrent modules or activations with a custom ``forward`` are refused with a reason.
    :meth:`prepare` sizes every activation site's per-unit parameters (:meth:`units_of`) and notes the device
    parameter-free replacements are built on (:meth:`placed`)."""

    def __init__(self, kinds: Sequence[str], recurrent: bool) -> None:
        self.kinds = tuple(kinds)
        self.module_types = tuple(ACTIVATION_MODULES[k] for k in self.kinds) + (tuple(RECURRENT) if recurrent else ())
        self.functions = tuple(f for k in self.kinds for f in ACTIVATION_FUNCTIONS[k])
        self.methods = tuple(ACTIVATION_METHODS[k] for k in self.kinds)
        self.unsupported = NOISE_LEAVES
        self.units: dict[str, Units] = {}
        self.device: torch.device | None = None

    @staticmethod
    def is_recurrent(site: Site) -> bool:
        return site.source == "module" and isinstance(site.module, tuple(RECURRENT))

    def prepare(self, context: SurgeryContext) -> None:
        self.device = reference_device(context.root)
        for site in context.sites:
            if not self.is_recurrent(site):
                self.units[site.name] = site_units(site, context.root, context.graph)

    def units_of(self, site: Site) -> Units:
        """(num_features, unit_dim, shared) of an activation site's replacement."""
        return self.units.get(site.name, SHARED)

    def recurrent_replacement(self, site: Site, gates: str | None, gate_kwargs: dict[str, Any]) -> nn.Module:
        """The noisy counterpart of a recurrent module site, with its weights and gates ``gates``."""
        assert site.module is not None
        cls = next(new for old, new in RECURRENT.items() if isinstance(site.module, old))
        return cls.from_torch(site.module, gates=gates, gate_kwargs=gate_kwargs)

    def placed(self, module: nn.Module) -> nn.Module:
        """``module`` on the model's device (a parameter-free activation has no old parameters to follow)."""
        return module if self.device is None else module.to(device=self.device)

    def call_args(self, site: Site, node: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Only the tensor: ``out=`` / ``inplace=`` arguments have no meaning for the replacement module.
        return (call_input(node),), {}

    def refuse(self, site: Site) -> str | None:
        if site.source != "module":
            return None
        assert site.module is not None
        if isinstance(site.module, tuple(RECURRENT)):
            return recurrent_refusal(site.module)
        return overridden_forward(site.module)
