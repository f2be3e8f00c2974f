"""Tracing a model for surgery, and what to say when it cannot be traced.

The tracer keeps every module a rule can replace as a leaf (a ``call_module`` node), plus torch.fx's usual
leaves (built-in ``torch.nn`` modules), so a traced graph shows rule-matched modules and the functional /
method calls made by user code. When tracing fails the engine falls back to the module tree; the functions here
then scan the source of the user-defined ``forward`` methods so the warning can name the calls it cannot see.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterable

from torch import fx, nn

from surgeon.surgery.rules import Site

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class SurgeryTracer(fx.Tracer):
    """``fx.Tracer`` whose leaves also include the given module types."""

    # A GraphModule remembers its tracer class and unpickling re-traces with ``tracer_cls()``: no required args.
    def __init__(self, leaf_types: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return is_surgeon_unit(m) or super().is_leaf_module(m, module_qualified_name)


_UNIT_PACKAGES = ("surgeon.layers.", "surgeon.noise.")


def is_surgeon_unit(module: nn.Module) -> bool:
    """A replacement an earlier surgery installed (ACDCLinear, NoisyLSTM, ...) with only such units inside.

    Their forwards check shapes and branch on them, which fx cannot trace; kept as leaves, a later transform in a
    chain (convert after noisify, ...) still sees the rest of the model's graph. A StochasticSkip wraps a user
    block and stays traceable, so the calls inside that block remain visible.
    """
    if not type(module).__module__.startswith(_UNIT_PACKAGES):
        return False
    return all(type(m).__module__.startswith(_UNIT_PACKAGES) or isinstance(m, (nn.ModuleList, nn.ModuleDict))
               for m in module.modules())


def trace(model: nn.Module, leaf_types: tuple[type[nn.Module], ...]) -> tuple[fx.Graph | None, str]:
    """The traced graph of ``model`` (root ``model``), or ``(None, why)`` when fx cannot trace it."""
    tracer = SurgeryTracer(leaf_types)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... depending on the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first}"[:300]
    return graph, ""


def is_builtin(module: nn.Module) -> bool:
    """A module defined inside torch (its forward is torch's own code)."""
    return type(module).__module__.startswith("torch.")


def inside_builtin_block(name: str, modules: dict[str, nn.Module]) -> bool:
    """Whether a proper ancestor of ``name`` is a built-in non-container module (e.g. TransformerEncoderLayer)."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = modules.get(".".join(parts[:depth]))
        if parent is not None and is_builtin(parent) and not isinstance(parent, _CONTAINERS):
            return True
    root = modules.get("")
    return root is not None and is_builtin(root) and not isinstance(root, _CONTAINERS) and name != ""


def mark_outputs_traced(graph: fx.Graph, sites: list[Site], opaque_targets: set[str]) -> None:
    """Flag sites whose result reaches the graph output without passing through another site.

    ``opaque_targets`` are call_module targets (leaves holding candidates) at which the walk stops unmarked.
    """
    by_node: dict[fx.Node, Site] = {}
    by_target: dict[str, Site] = {}
    for site in sites:
        for node in site.nodes:
            by_node[node] = site
        if site.source == "module":
            for name in site.names:
                by_target[name] = site
    seen: set[fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        site = by_node.get(node)
        if site is None and node.op == "call_module":
            site = by_target.get(str(node.target))
            if site is None and str(node.target) in opaque_targets:
                continue
        if site is not None:
            site.is_output = True
            continue
        stack.extend(node.all_input_nodes)


def mark_outputs_fallback(sites: list[Site], modules: dict[str, nn.Module]) -> None:
    """Without a graph: the last module site in registration order is the output layer, unless it sits inside a
    built-in block (a TransformerEncoderLayer's linear2 is no classifier)."""
    module_sites = [s for s in sites if s.source == "module"]
    if module_sites and not inside_builtin_block(module_sites[-1].name, modules):
        module_sites[-1].is_output = True


def _is_self_chain(expr: ast.expr) -> bool:
    """``self`` or ``self.a.b``: calling it calls a submodule, not a function."""
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return isinstance(expr, ast.Name) and expr.id == "self"


def _call_name(func: ast.expr) -> tuple[str, str] | None:
    """(qualifier, attribute) of a functional call: ``F.linear`` -> ("F", "linear"), ``linear`` -> ("", ...)."""
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute) and not _is_self_chain(func.value):
        return ast.unparse(func.value), func.attr
    return None


def unseen_calls(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``"Class.forward:line qualifier.name"`` for each call to one of ``names`` in user-defined forwards.

    Calls on ``self`` (``self.linear(x)``: a submodule) are not functional calls and are left out.
    """
    wanted = set(names)
    found: list[str] = []
    classes: dict[type, None] = {}
    for module in model.modules():
        if not is_builtin(module):
            classes.setdefault(type(module), None)
    for cls in classes:
        forward = getattr(cls, "forward", None)
        try:
            lines, start = inspect.getsourcelines(forward)
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (OSError, TypeError, SyntaxError, IndentationError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            callee = _call_name(node.func)
            if callee is None or callee[1] not in wanted:
                continue
            label = f"{callee[0]}.{callee[1]}" if callee[0] else callee[1]
            found.append(f"{cls.__name__}.forward:{start + node.lineno - 1} {label}")
    return found


def reads_parameters_of(owner: nn.Module, attr: str) -> str | None:
    """``"Class.forward:line self.attr.weight"`` when ``owner``'s forward reads a parameter of its child ``attr``
    directly (e.g. T5's ``self.wo.weight.dtype``), else None. Used when there is no graph to show such reads."""
    forward = getattr(type(owner), "forward", None)
    if is_builtin(owner) or forward is None:
        return None
    try:
        lines, start = inspect.getsourcelines(forward)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    for node in ast.walk(tree):
        child = node.value if isinstance(node, ast.Attribute) else None
        if (isinstance(child, ast.Attribute) and child.attr == attr and isinstance(child.value, ast.Name)
                and child.value.id == "self" and node.attr in ("weight", "bias")):
            return f"{type(owner).__name__}.forward:{start + node.lineno - 1} self.{attr}.{node.attr}"
    return None
