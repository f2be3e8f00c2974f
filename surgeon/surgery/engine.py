"""The surgery engine: trace (or fall back to the module tree), select, rewrite, record.

:func:`apply_surgery` is the one entry point every transform goes through (``convert``, ``noisify``,
``mollify``). A transform supplies :class:`~surgeon.surgery.rules.Rule` objects and its typed config; the
engine does everything else:

1. copies the model (unless ``inplace``) and traces it with torch.fx, keeping the rules' module types as leaves;
   if tracing fails it warns once (:class:`~surgeon.errors.TraceFallbackWarning`, naming the functional calls it
   cannot see) and works on the module tree alone;
2. finds the candidate sites (modules from the module tree; function and method calls from the graph) and
   refuses the ones that cannot be rewritten safely: tied parameters, modules whose parameters ``forward``
   reads directly instead of calling them, anything the rule refuses;
3. applies ``include`` / ``exclude`` / ``filter_fn`` (see :mod:`surgeon.surgery.select`) and the rule's default
   policy (``Rule.decline``, overridden when ``include`` lists a site by name);
4. drives each rule's whole life: ``prepare`` with its selected sites, ``build`` one replacement per site
   (keeping device, dtype, ``requires_grad`` and train/eval mode; a module registered or called twice gets one
   shared replacement), wraps the runs of sibling modules the rule declares (:class:`~surgeon.surgery.rules.Group`),
   and ``finish`` — even when a build failed; a progress bar covers the rules' slow work (``Rule.cost``);
5. returns the model with its own class when only modules were swapped, and an ``fx.GraphModule`` (named after
   the model's class, carrying every untouched parameter and buffer under its old name) only when calls inside
   ``forward`` had to be rewritten;
6. attaches one :class:`~surgeon.surgery.record.SurgeryRecord` (the config plus ``selected`` replay the surgery
   exactly), after checking that it is JSON-able.

Example — a rule that swaps ``nn.ReLU`` modules and ``torch.relu`` calls for a module ``MyAct``::

    class ReluRule(Rule):
        name = "relu"
        module_types = (nn.ReLU,)
        functions = (torch.relu, F.relu)
        methods = ("relu",)
        def build(self, site):
            return MyAct()

    model = apply_surgery(model, [ReluRule()], transform_name="myact")

To make such a surgery replayable from a checkpoint, give it a config class and a handler
(:mod:`surgeon.surgery.transform`) and pass ``config=`` here.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from surgeon.configs.base import TransformConfig
from surgeon.errors import SelectionError, SelectionWarning, SurgeryError, TraceFallbackWarning
from surgeon.surgery.progress import LazyProgress
from surgeon.surgery.record import (
    Change,
    Skip,
    SurgeryRecord,
    append_record,
    records,
    set_records,
    unwrap,
)
from surgeon.surgery.rules import Group, Replacement, Rule, Site, SurgeryContext
from surgeon.surgery.select import FilterFn, NameMatcher, Pattern, describe_candidates
from surgeon.surgery.tracing import (
    mark_outputs_fallback,
    mark_outputs_traced,
    reads_parameters_of,
    trace,
    unseen_calls,
)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warn_user(message: str, category: type[Warning]) -> None:
    """Warn, attributing the warning to the first caller outside surgeon (however deep the front door is)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _note(notes: list[str], message: str, category: type[Warning]) -> None:
    """Warn the user and keep the message for the record."""
    warn_user(message, category)
    notes.append(message)


def _parent(name: str) -> tuple[str, str]:
    owner, _, attr = name.rpartition(".")
    return owner, attr


def _join(owner: str, attr: str) -> str:
    return f"{owner}.{attr}" if owner else attr


def _innermost_module(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else ""


class _Discovery:
    """Candidate sites of a model plus the reasons some of them cannot be touched."""

    def __init__(self, root: nn.Module, rules: Sequence[Rule], graph: fx.Graph | None) -> None:
        self.root, self.rules, self.graph = root, rules, graph
        self.modules = dict(root.named_modules(remove_duplicate=False))
        self.aliases: dict[int, list[str]] = {}
        for name, module in self.modules.items():
            self.aliases.setdefault(id(module), []).append(name)
        self.param_names: dict[int, list[str]] = {}
        for name, param in root.named_parameters(remove_duplicate=False):
            self.param_names.setdefault(id(param), []).append(name)
        self.sites: list[Site] = []
        self.refused: dict[Site, str] = {}
        self.skips: list[Skip] = []
        self.blocked: dict[str, str] = {}     # unsupported module name -> reason
        self._module_sites()
        if graph is not None:
            self._call_sites()
        for index, site in enumerate(self.sites):
            site.index = index
        self._refusals()

    def _module_sites(self) -> None:
        for name, module in self.root.named_modules():
            for rule in self.rules:
                unsupported = [reason for kind, reason in rule.unsupported.items() if isinstance(module, kind)]
                # One skip per unsupported subtree (a NoisyLSTM, not each noisy gate inside it).
                inside = any(name.startswith(block + ".") for block in self.blocked if block)
                if unsupported and name not in self.blocked and not inside:
                    self.blocked[name] = f"{type(module).__name__}: {unsupported[0]}"
                    self.skips.append(Skip(name or "(model)", self.blocked[name]))
                if not rule.matches_module(module, name):
                    continue
                names = self.aliases[id(module)]
                owner, _ = _parent(name)
                self.sites.append(Site(name=name, source="module", old=rule.describe_module(module), rule=rule,
                                       module=module, owner=owner, aliases=tuple(n for n in names if n != name)))
                break

    def _call_sites(self) -> None:
        assert self.graph is not None
        grouped: dict[tuple[int, Any], Site] = {}
        taken: set[str] = set()
        for node in self.graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            for rule_index, rule in enumerate(self.rules):
                if not rule.matches_node(node):
                    continue
                owner = _innermost_module(node)
                info = rule.inspect_node(node, self.root)
                if isinstance(info, str):
                    self.skips.append(Skip(_join(owner, node.name), info))
                    break
                key = (rule_index, info.get("key", node.name))
                site = grouped.get(key)
                if site is None:
                    attr = node.name
                    holder = self.modules.get(owner, self.root)
                    while hasattr(holder, attr) or _join(owner, attr) in taken:
                        attr += "_fn"
                    taken.add(_join(owner, attr))
                    site = Site(name=_join(owner, attr), source="function" if node.op == "call_function" else "method",
                                old=rule.describe_node(node), rule=rule, module=self.modules.get(owner, self.root),
                                owner=owner, params=dict(info.get("params", {})), info=info)
                    grouped[key] = site
                    self.sites.append(site)
                site.nodes.append(node)
                break

    def _refusals(self) -> None:
        called: set[str] = set()
        read: dict[str, list[fx.Node]] = {}
        if self.graph is not None:
            for node in self.graph.nodes:
                if node.op == "call_module":
                    called.add(str(node.target))
                elif node.op == "get_attr":
                    read.setdefault(str(node.target), []).append(node)
        module_site_names = {n: s for s in self.sites if s.source == "module" for n in s.names}
        for site in self.sites:
            reason = self._blocked_reason(site) or self._tied_reason(site)
            if reason is None and self.graph is not None:
                reason = self._direct_use_reason(site, called, read, module_site_names)
            elif reason is None and site.source == "module":
                reason = self._source_read_reason(site)
            if reason is None:
                reason = site.rule.refuse(site)
            if reason is not None:
                self.refused[site] = reason

    def _blocked_reason(self, site: Site) -> str | None:
        for block, reason in self.blocked.items():
            if site.source == "module" and (block == "" or site.name.startswith(block + ".")):
                return f"inside {block or '(model)'} — {reason}"
        if site.source == "module" and site.name == "":
            return "is the whole model; wrap it in a container to replace it"
        return None

    def _tied_reason(self, site: Site) -> str | None:
        if site.source == "module":
            assert site.module is not None
            own = {_join(alias, p) for alias in site.names
                   for p, _ in site.module.named_parameters(remove_duplicate=False)}
            tensors = [p for _, p in site.module.named_parameters()]
        else:
            own, tensors = set(site.params), list(site.params.values())
        for tensor in tensors:
            others = [n for n in self.param_names.get(id(tensor), []) if n not in own]
            if others:
                mine = next(n for n in self.param_names[id(tensor)] if n in own) if own else "a parameter"
                return f"parameter {mine} is tied to {others[0]}; replacing it would untie the weights"
        return None

    def _source_read_reason(self, site: Site) -> str | None:
        """Without a graph, parameter reads show only in the source of the owner's forward."""
        for name in site.names:
            owner, attr = _parent(name)
            found = reads_parameters_of(self.modules.get(owner, self.root), attr)
            if found:
                return f"forward reads its parameters directly ({found}); a replacement module would break it"
        return None

    def _direct_use_reason(self, site: Site, called: set[str], read: dict[str, list[fx.Node]],
                           module_sites: dict[str, Site]) -> str | None:
        if site.source == "module":
            if any(n in called for n in site.names):
                return None
            direct = [t for t in read for n in site.names if t.startswith(n + ".")]
            if direct:
                return (f"forward reads its parameters directly ({direct[0]}) instead of calling it; "
                        "a replacement module would be ignored")
            return None
        for qualname in site.params:
            owner, _ = _parent(qualname)
            if owner in module_sites:
                return f"its parameter {qualname} belongs to module {owner} ({module_sites[owner].old})"
            for getter in read.get(qualname, []):
                strangers = [u for u in getter.users if u not in site.nodes]
                if strangers:
                    return f"parameter {qualname} is also used by {strangers[0].name} in forward"
        return None


def _to_json_safe_names(sites: Iterable[Site]) -> list[str]:
    return [s.name for s in sites]


def _select(discovery: _Discovery, include: NameMatcher | None, exclude: NameMatcher | None,
            filter_fn: FilterFn | None, transform: str) -> tuple[list[Site], list[Skip], list[str]]:
    sites = discovery.sites
    names = [s.names for s in sites]
    messages: list[str] = []
    if not sites:
        kinds = sorted({t.__name__ for r in discovery.rules for t in r.module_types}
                       | {getattr(f, "__name__", str(f)) for r in discovery.rules for f in r.functions}
                       | {f"Tensor.{m}" for r in discovery.rules for m in r.methods})
        extra = f" ({len(discovery.skips)} unsupported: {discovery.skips[0].name})" if discovery.skips else ""
        raise SelectionError(f"{transform} found nothing to replace in {type(discovery.root).__name__}: "
                             f"no {', '.join(kinds)}{extra}")
    included = [True] * len(sites)
    explicit = [False] * len(sites)
    if include is not None:
        included, unused = include.matches(names)
        if not any(included):
            raise SelectionError(f"include={_show(include)} matched none of the {len(sites)} candidates: "
                                 f"{describe_candidates([s.name for s in sites])}")
        if include.is_list:
            explicit = list(included)
            for entry in unused:
                messages.append(f"include entry {entry!r} matched no candidate")
    excluded = [False] * len(sites)
    if exclude is not None:
        excluded, unused = exclude.matches(names)
        for entry in unused:
            messages.append(f"exclude entry {entry!r} excluded nothing")
    selected: list[Site] = []
    skips = list(discovery.skips)
    for site, inc, exc, expl in zip(sites, included, excluded, explicit):
        reason = discovery.refused.get(site)
        if not inc:
            reason = f"not matched by include={_show(include)}"
        elif reason is None and exc:
            reason = f"matched exclude={_show(exclude)}"
        elif reason is None and filter_fn is not None:
            subject = site.module if site.module is not None else discovery.root
            if not filter_fn(subject, site.name):
                reason = "filter_fn returned False"
        if reason is None and not expl:
            reason = site.rule.decline(site)
        if reason is None:
            selected.append(site)
        else:
            skips.append(Skip(site.name, reason))
    return selected, skips, messages


def _show(matcher: NameMatcher | None) -> str:
    if matcher is None:
        return "None"
    return repr(matcher.regex.pattern) if matcher.regex is not None else repr(list(matcher.entries))


def _reference_tensor(site: Site, root: nn.Module) -> torch.Tensor | None:
    old = site.old_parameters()
    if old:
        return old[0]
    holder = site.module if site.module is not None else root
    return next(iter(list(holder.parameters()) + list(holder.buffers())), None)


def _adapt(new: nn.Module, site: Site, root: nn.Module) -> None:
    """Give the replacement the old site's device, floating dtype, requires_grad and train/eval mode."""
    ref = _reference_tensor(site, root)
    if ref is not None:
        if ref.is_floating_point() and site.old_parameters():
            new.to(device=ref.device, dtype=ref.dtype)
        else:
            new.to(device=ref.device)
    old = site.old_parameters()
    if old and not any(p.requires_grad for p in old):
        for param in new.parameters():
            param.requires_grad_(False)
    holder = site.module if site.module is not None else root
    new.train(holder.training)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    owner, attr = _parent(name)
    setattr(root.get_submodule(owner), attr, module)


def _remove_parameter(root: nn.Module, qualname: str, param: nn.Parameter) -> None:
    owner, attr = _parent(qualname)
    holder = root.get_submodule(owner)
    if holder._parameters.get(attr) is param:
        del holder._parameters[attr]


def _rewrite_calls(graph: fx.Graph, site: Site) -> None:
    for node in site.nodes:
        args, kwargs = site.rule.call_args(site, node)
        with graph.inserting_before(node):
            call = graph.call_module(site.name, args, kwargs)
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    for getter in [n for n in graph.nodes if n.op == "get_attr" and str(n.target) in site.params]:
        if not getter.users:
            graph.erase_node(getter)


def _copy_tensor_attr(src: nn.Module, dst: nn.Module, qualname: str) -> None:
    """Make ``dst.<qualname>`` the same tensor as ``src.<qualname>``, creating plain intermediate modules."""
    *path, attr = qualname.split(".")
    for part in path:
        src = getattr(src, part)
        nxt = getattr(dst, part, None)
        if nxt is None:
            nxt = nn.Module()
            nxt.training = src.training
            dst.add_module(part, nxt)
        dst = nxt
    value = getattr(src, attr)
    if isinstance(value, nn.Parameter):
        dst.register_parameter(attr, value)
    else:
        dst.register_buffer(attr, value, persistent=attr not in src._non_persistent_buffers_set)


def _has_attr(module: nn.Module, qualname: str) -> bool:
    try:
        module.get_parameter(qualname)
        return True
    except AttributeError:
        pass
    try:
        module.get_buffer(qualname)
        return True
    except AttributeError:
        return False


def _graph_module(work: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    graph.lint()
    gm = fx.GraphModule(work, graph, class_name=class_name)
    # GraphModule only copies what the graph references; untouched parameters and buffers (unused in forward,
    # or belonging to modules it never calls) must keep their state_dict keys.
    tensors = list(work.named_parameters(remove_duplicate=False)) + list(work.named_buffers(remove_duplicate=False))
    for name, _ in tensors:
        if not _has_attr(gm, name):
            _copy_tensor_attr(work, gm, name)
    own = dict(work.named_modules(remove_duplicate=False))
    for name, module in gm.named_modules(remove_duplicate=False):
        if name in own:
            module.training = own[name].training
    set_records(gm, records(work))
    return gm


def _fallback_message(model: nn.Module, why: str, rules: Sequence[Rule], transform: str) -> str:
    names = [getattr(f, "__name__", str(f)) for r in rules for f in r.functions] + [m for r in rules for m in r.methods]
    unseen = unseen_calls(model, names) if names else []
    calls = (f"functional calls it cannot see were left as they are: {', '.join(unseen)}" if unseen
             else "no functional calls to " + "/".join(sorted(set(names))) + " were found in user forward code"
             if names else "only modules are replaced")
    return (f"{transform}: torch.fx could not trace {type(model).__name__} ({why}); swapped modules in the module "
            f"tree instead; {calls}")


def _swap(work: nn.Module, graph: fx.Graph | None, site: Site) -> Change:
    """Build ``site``'s replacement, put it in place and describe the change."""
    built = site.rule.build(site)
    result = built if isinstance(built, Replacement) else Replacement(built)
    new = result.module
    params_before = sum(p.numel() for p in site.old_parameters())
    _adapt(new, site, work)
    if site.source == "module":
        for name in site.names:
            _set_module(work, name, new)
    else:
        work.get_submodule(site.owner).add_module(_parent(site.name)[1], new)
        assert graph is not None
        _rewrite_calls(graph, site)
        for qualname, param in site.params.items():
            _remove_parameter(work, qualname, param)
    note = result.note
    if site.aliases:
        note = "; ".join(filter(None, [note, f"shared module, also at {', '.join(site.aliases)}"]))
    if len(site.nodes) > 1:
        note = "; ".join(filter(None, [note, f"one replacement for {len(site.nodes)} calls"]))
    config = result.config if result.config is not None else site.rule.change_config(new)
    return Change(name=site.name, source=site.source, old=site.old, new=type(new).__name__, config=config,
                  params_before=params_before, params_after=sum(p.numel() for p in new.parameters()),
                  fit_error=result.fit_error, note=note)


def _wrap(work: nn.Module, group: Group, changes: list[Change]) -> None:
    """Wrap ``group``'s run into one module in place, record it before its first member, rename its members."""
    owner = work.get_submodule(group.owner)
    run = nn.Sequential(*[getattr(owner, key) for key in group.keys])
    built = group.rule.build_group(group, run)
    result = built if isinstance(built, Replacement) else Replacement(built)
    wrapper = result.module
    reference = next(iter(list(run.parameters()) + list(run.buffers())), None)
    if reference is not None:
        wrapper.to(device=reference.device)
    wrapper.train(run[-1].training)
    setattr(owner, group.keys[0], wrapper)
    for key in group.keys[1:]:
        identity = nn.Identity()
        identity.train(run[-1].training)
        setattr(owner, key, identity)
    by_name = {c.name: c for c in changes}
    olds = [by_name[m].old if m in by_name else type(module).__name__ for m, module in zip(group.members, run)]
    inner = {id(p) for p in run.parameters()}
    change = Change(name=group.name, source="modules", old="block " + " → ".join(olds), new=type(wrapper).__name__,
                    config=result.config if result.config is not None else group.rule.change_config(wrapper),
                    params_after=sum(p.numel() for p in wrapper.parameters() if id(p) not in inner),
                    note=result.note)
    first = min((i for i, c in enumerate(changes) if c.name in group.members), default=len(changes))
    changes.insert(first, change)
    for index, member in enumerate(group.members):
        if member in by_name:
            moved = by_name[member]
            moved.name = _join(_join(group.name, group.inner_path), str(index))
            moved.note = "; ".join(filter(None, [moved.note, f"was {member}, now inside {group.name}"]))


def _run_rules(work: nn.Module, graph: fx.Graph | None, rules: Sequence[Rule], selected: list[Site],
               quiet: bool) -> tuple[list[Change], list[Warning]]:
    """Each rule's whole life: ``prepare`` with its sites, ``build`` each, ``finish`` (even on error)."""
    costs = [site.rule.cost(site) for site in selected]
    labels = [site.rule.progress_label for site, cost in zip(selected, costs) if cost > 0]
    progress = LazyProgress(sum(costs) or 1, labels[0] if labels else "", quiet=quiet or not labels)
    prepared: list[Rule] = []
    finished: list[Warning] = []
    with progress:
        try:
            for rule in rules:
                mine = [s for s in selected if s.rule is rule]
                if mine:
                    prepared.append(rule)
                    rule.prepare(SurgeryContext(work, graph, mine, progress))
            changes = [_swap(work, graph, site) for site in selected]
            for rule in prepared:
                for group in rule.groups():
                    _wrap(work, group, changes)
        finally:
            for rule in prepared:
                finished.extend(rule.finish())
    return changes, finished


def apply_surgery(model: nn.Module, rules: Sequence[Rule], *, config: TransformConfig | None = None,
                  transform_name: str | None = None, include: Pattern = None, exclude: Pattern = None,
                  filter_fn: FilterFn | None = None, inplace: bool = False, quiet: bool = False) -> nn.Module:
    """Replace every selected site of ``rules`` in ``model`` and attach a record of what happened.

    ``config`` is the transform's typed config; the record stores it (as each rule's
    :meth:`~surgeon.surgery.rules.Rule.recorded_config` adjusts it), so that replaying the record on a fresh
    model with ``include=record.selected`` rebuilds the same structure. ``transform_name`` defaults to
    ``config.transform``. ``quiet`` hides the progress bar of slow rules. Returns the model (same class) or,
    when calls had to be rewritten, a GraphModule. Raises :class:`~surgeon.errors.SelectionError` when nothing
    can be selected, :class:`~surgeon.errors.SurgeryError` when the record would not be JSON-able.
    """
    transform_name = transform_name or (config.transform if config is not None else "surgery")
    if not isinstance(model, nn.Module):
        raise SurgeryError(f"{transform_name} needs an nn.Module, got {type(model).__name__}")
    rules = list(rules)
    include_m = NameMatcher.parse(include, "include")
    exclude_m = NameMatcher.parse(exclude, "exclude")
    if filter_fn is not None and not callable(filter_fn):
        raise SelectionError(f"filter_fn must be callable (module, name) -> bool, got {type(filter_fn).__name__}")
    model = unwrap(model)
    work = model if inplace else copy.deepcopy(model)
    set_records(work, records(model))     # a copy of a GraphModule may have dropped them
    leaf_types = tuple(t for r in rules for t in (*r.module_types, *r.unsupported))
    graph, why = trace(work, leaf_types)
    discovery = _Discovery(work, rules, graph)
    if graph is not None:
        opaque = {n for s in discovery.sites if s.source == "module" for n in _ancestors(s.name)}
        mark_outputs_traced(graph, discovery.sites, opaque)
    else:
        mark_outputs_fallback(discovery.sites, discovery.modules)
    selected, skips, messages = _select(discovery, include_m, exclude_m, filter_fn, transform_name)
    notes: list[str] = []
    if graph is None:
        _note(notes, _fallback_message(work, why, rules, transform_name), TraceFallbackWarning)
    for message in messages:
        _note(notes, f"{transform_name}: {message}", SelectionWarning)
    if not selected:
        _note(notes, f"{transform_name}: nothing was replaced ({len(skips)} candidates skipped)", SelectionWarning)
    changes, finished = _run_rules(work, graph, rules, selected, quiet)
    for warning in finished:
        _note(notes, str(warning), type(warning))
    result_model: nn.Module = work
    if any(site.source != "module" for site in selected):
        assert graph is not None
        result_model = _graph_module(work, graph, type(model).__name__)
    for rule in rules:
        config = rule.recorded_config(config) if config is not None else None
    record = SurgeryRecord(transform=transform_name, config_type="" if config is None else type(config).__name__,
                           config={} if config is None else config.to_dict(),
                           selected=_to_json_safe_names(selected), changes=changes, skipped=skips,
                           traced=graph is not None, warnings=notes)
    record.check_json()
    append_record(result_model, record)
    return result_model


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
