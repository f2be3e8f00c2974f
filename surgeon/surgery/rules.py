"""The extension point of the surgery engine: a :class:`Rule` says what to replace and builds the replacement.

A rule matches three kinds of *sites*:

- ``module`` sites: submodules whose type is in ``Rule.module_types`` (found in the module tree, so they are
  seen whether or not torch.fx can trace the model);
- ``function`` sites: ``call_function`` nodes whose target is in ``Rule.functions`` (e.g. ``torch.sigmoid``,
  ``F.linear``), only visible when the model traces;
- ``method`` sites: ``call_method`` nodes whose method name is in ``Rule.methods`` (e.g. ``"sigmoid"``).

Every site becomes one replacement ``nn.Module``. A module site's replacement takes the module's place at the
same qualified name (and at every alias of a module registered twice). A call site's replacement is registered
on the module whose ``forward`` makes the call, under the fx node's name (``"blk.sigmoid_1"``), and the call is
rewritten into ``call_module``; several nodes may share one site when ``inspect_node`` gives them the same
``key`` (e.g. two ``F.linear`` calls on one weight share one replacement).

To write a transform, subclass :class:`Rule`, set the three match attributes, implement :meth:`Rule.build`, and
override the optional hooks (``refuse`` for "cannot convert" reasons, ``decline`` for default-policy skips that an
explicit ``include`` overrides, ``inspect_node`` / ``call_args`` for call sites with extra operands, ``prepare``
for work that needs all selected sites at once). Then call
:func:`surgeon.surgery.engine.apply_surgery`, which traces, falls back, selects, rewrites and records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from surgeon.surgery.progress import LazyProgress

if TYPE_CHECKING:
    from surgeon.configs.base import TransformConfig

@dataclass(eq=False)
class Site:
    """One place a rule can act on; becomes exactly one replacement module."""

    name: str                                   # qualified name of the replacement in the returned model
    source: str                                 # "module", "function" or "method"
    old: str                                    # what is replaced, for records: "Linear(64, 256)", "F.linear"
    rule: Rule
    module: nn.Module | None = None             # module sites: the module replaced; call sites: the caller
    owner: str = ""                             # qualified name of the module that receives the replacement
    aliases: tuple[str, ...] = ()               # further names of a module registered more than once
    nodes: list[fx.Node] = field(default_factory=list)          # call sites: the calls rewritten
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # call sites: parameters it takes over
    info: dict[str, Any] = field(default_factory=dict)          # rule-specific data (e.g. weight, bias)
    index: int = 0                              # position among all candidates (stable for a model class)
    is_output: bool = False                     # its result reaches the model output through no other site

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def old_parameters(self) -> list[nn.Parameter]:
        """The parameters the replacement supersedes (deduplicated)."""
        tensors = list(self.module.parameters()) if self.source == "module" and self.module is not None else []
        tensors += list(self.params.values())
        seen: dict[int, nn.Parameter] = {}
        for tensor in tensors:
            seen.setdefault(id(tensor), tensor)
        return list(seen.values())


@dataclass
class Replacement:
    """What :meth:`Rule.build` may return instead of a bare module, to add facts to the record."""

    module: nn.Module
    fit_error: float | None = None
    note: str = ""
    config: dict[str, Any] | None = None     # overrides ``module.config()`` in the record


@dataclass(eq=False)
class Group:
    """A run of consecutive children of one container that the engine wraps into a single module.

    After every site is swapped, the engine takes the children ``keys`` of ``owner`` (their replacements, where
    they were sites) as an ``nn.Sequential``, passes it to :meth:`Rule.build_group`, puts the wrapper in the
    first slot and ``nn.Identity`` in the others (so later children keep their names), and records it; changes
    of sites inside the run are renamed to their new place, ``<group name>.<inner_path>.<i>``.
    """

    owner: str                       # qualified name of the container ("" for the model itself)
    keys: list[str]                  # consecutive child names, in order
    rule: Rule
    inner_path: str = "block"        # where the wrapper keeps the Sequential of the run
    info: dict[str, Any] = field(default_factory=dict)   # rule-specific data

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.keys[0]}" if self.owner else self.keys[0]

    @property
    def members(self) -> list[str]:
        return [f"{self.owner}.{key}" if self.owner else key for key in self.keys]


@dataclass
class SurgeryContext:
    """What the engine knows while a surgery runs; handed to :meth:`Rule.prepare`."""

    root: nn.Module                 # the model being rewritten (already a copy unless ``inplace``)
    graph: fx.Graph | None          # the traced graph, None on the module-tree fallback
    sites: list[Site]               # the selected sites, in candidate order
    # The surgery's progress bar (total: the sum of Rule.cost over the selected sites); ``update(done)`` with the
    # units done so far, across this rule's sites.
    progress: LazyProgress = field(default_factory=lambda: LazyProgress(1, "", quiet=True))


class Rule:
    """Base class: match sites, refuse or decline some, build replacements."""

    name: str = "rule"
    module_types: tuple[type[nn.Module], ...] = ()
    functions: tuple[Callable[..., Any], ...] = ()
    methods: tuple[str, ...] = ()
    # Module types that look like targets but cannot be rewritten; each gets a Skip with this reason and the
    # rule's module sites nested inside them are skipped too.
    unsupported: Mapping[type[nn.Module], str] = {}

    def matches_module(self, module: nn.Module, name: str) -> bool:
        return bool(self.module_types) and isinstance(module, self.module_types)

    def matches_node(self, node: fx.Node) -> bool:
        if node.op == "call_function":
            return any(node.target is fn for fn in self.functions)
        return node.op == "call_method" and node.target in self.methods

    def describe_module(self, module: nn.Module) -> str:
        extra = module.extra_repr()
        return f"{type(module).__name__}({extra})"

    def describe_node(self, node: fx.Node) -> str:
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        target = node.target
        module = getattr(target, "__module__", None) or "torch"
        return f"{module}.{getattr(target, '__name__', str(target))}"

    def inspect_node(self, node: fx.Node, root: nn.Module) -> dict[str, Any] | str:
        """Facts about a matched call: a dict (``key`` groups calls into one site, ``params`` maps qualified
        names of parameters the replacement takes over), or a string saying why the call cannot be converted."""
        return {"key": node.name, "params": {}}

    def call_args(self, site: Site, node: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of the ``call_module`` that replaces ``node``; by default the call's own arguments
        (for a method call, the tensor it is called on comes first)."""
        return tuple(node.args), dict(node.kwargs)

    def refuse(self, site: Site) -> str | None:
        """Why this site can never be converted (kept even when ``include`` names it), or None."""
        return None

    def decline(self, site: Site) -> str | None:
        """Why the default policy leaves this site alone (overridden when ``include`` lists it by name)."""
        return None

    #: What the progress bar says while this rule's costly sites are built.
    progress_label: str = "surgery"

    def cost(self, site: Site) -> float:
        """Units of slow work (e.g. fits) building ``site`` takes; the engine shows a progress bar when any."""
        return 0.0

    def prepare(self, context: SurgeryContext) -> None:
        """Called once with every selected site before the first :meth:`build`."""

    def groups(self) -> list[Group]:
        """Runs of sibling modules to wrap once every site is swapped (found in :meth:`prepare`); none by
        default."""
        return []

    def build_group(self, group: Group, run: nn.Sequential) -> nn.Module | Replacement:
        """The wrapper of ``run`` (the group's modules, already swapped), keeping ``run`` at ``group.inner_path``."""
        raise NotImplementedError(f"{type(self).__name__} declares groups and must implement build_group()")

    def finish(self) -> list[Warning]:
        """Called once after the last :meth:`build` of a prepared rule, even when the surgery failed; returns
        warnings for the record (the engine also issues them; they are dropped when the surgery failed)."""
        return []

    def recorded_config(self, config: TransformConfig) -> TransformConfig:
        """The config the record stores: one that rebuilds exactly what was built (e.g. the depths an automatic
        search chose); by default ``config`` itself."""
        return config

    def build(self, site: Site) -> nn.Module | Replacement:
        """The replacement for ``site``: an ``nn.Module`` whose forward takes :meth:`call_args`."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def change_config(self, module: nn.Module) -> dict[str, Any]:
        """JSON-able constructor arguments of a replacement, for the record."""
        getter = getattr(module, "config", None)
        return dict(getter()) if callable(getter) else {}
