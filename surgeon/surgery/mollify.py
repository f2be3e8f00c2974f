"""``mollify``: turn a network into a mollifying network (thesis §4.4, Algorithm 2, eqs. 4.24–4.30).

Two changes, both controlled per layer l by the noise level p^l that an
:class:`~surgeon.noise.Annealer` anneals from 1 to 0 (eq. 4.31, ``p_t^l = 1 − exp(−k v_t l / (t L))``):

1. **Mollified activations** (eqs. 4.24–4.26). Every selected sigmoid / tanh / ReLU (``nn.Sigmoid``,
   ``nn.Tanh``, ``nn.ReLU`` modules; ``torch.*`` / ``F.*`` calls and ``x.sigmoid()``-style methods when the
   model traces) becomes :class:`~surgeon.noise.MollifiedActivation`::

       Δ = u(x) − f(x),   σ(x) = (sigmoid(a_i Δ) − 0.5)²,   s = p^l c σ(x) |ξ|,
       ψ(x) = sgn(u(x)) · min(|u(x)|, |f(x) + sgn(u(x)) s|)

   so p^l c large gives the linearisation u and p^l = 0 gives the original f. ``nn.LSTM`` / ``nn.GRU`` (and
   cells) get mollified gates (§4.4.3.2) through :mod:`surgeon.noise.recurrent`, weights transferred.

2. **Stochastic skipping** (``skip=True``, eqs. 4.27–4.30)::

       h^l = π^l ⊙ h^{l−1} + (1 − π^l) ⊙ ψ(block(h^{l−1})),   π^l ~ Bernoulli(p^l)

   What a *block* is (the thesis leaves it to the model, §4.4.3): a run of consecutive children of an
   ``nn.Sequential`` made of one weight layer — ``nn.Linear`` (or any layer with ``in_features`` /
   ``out_features``, e.g. ACDC / Fastfood), or ``nn.Conv1d/2d/3d`` that keeps the spatial size (stride 1 and
   "same" padding) — followed by any norm / dropout / identity layers and closed by an activation this call
   mollifies. Its input and output then differ at most in the unit dimension (features, or channels for conv
   maps), which :class:`~surgeon.noise.StochasticSkip` zero-pads or truncates. The run is replaced in place:
   the weight layer's slot holds ``StochasticSkip(Sequential(weight, ..., MollifiedActivation))`` and the
   other slots hold ``nn.Identity`` (so later children keep their names, e.g. the classifier stays ``net.4``).
   A block is wrapped only when the Sequential is run as a whole (or the model is an ``fx.GraphModule`` that
   calls its children in that chain), its modules are not shared, and its activation was selected; other
   mollified activations get no skip. Each record change of a wrapped block says so.

Layers are numbered 1, 2, … from the input in the order the forward pass reaches the selected sites (graph
order; module order when the model cannot be traced): one number per activation site (a block shares its
activation's number), ``num_layers`` numbers for a recurrent module (one per RNN layer). The numbers are
stored on the modules' ``layer`` attribute, so ``Annealer(model, "loss-exp")`` anneals lower layers faster.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from surgeon.configs.noise import DEFAULT_MOLLIFY_C, MollifyConfig
from surgeon.noise.mollified import MollifiedActivation
from surgeon.noise.skip import StochasticSkip
from surgeon.surgery.activations import ActivationRule, activation_kind, execution_order
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.rules import Group, Replacement, Site, SurgeryContext
from surgeon.surgery.select import FilterFn, Pattern
from surgeon.surgery.transform import Call, make_config, register_transform, run_transform

__all__ = ["DEFAULT_C", "mollify"]

DEFAULT_C = DEFAULT_MOLLIFY_C

# Layers allowed between the weight layer and the activation of a block: they keep the unit axis.
_BLOCK_INNER: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _keeps_spatial_size(conv: nn.Module) -> bool:
    """Whether a convolution maps (N, C_in, *S) to (N, C_out, *S): stride 1 and out = in + 2p − d(k − 1) = in."""
    if any(s != 1 for s in conv.stride):
        return False
    if conv.padding == "same":
        return True
    if conv.padding == "valid":
        return all(k == 1 for k in conv.kernel_size)
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def _block_start(module: nn.Module) -> int | None:
    """unit_dim of a block that starts with ``module`` (-1 features, 1 channels), or None if it cannot start one."""
    if isinstance(module, _CONVS):
        return 1 if _keeps_spatial_size(module) else None
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None),
                                                                            int):
        return -1
    return None


def _join(owner: str, attr: str) -> str:
    return f"{owner}.{attr}" if owner else attr


class MollifyRule(ActivationRule):
    """Activation sites -> MollifiedActivation; LSTM/GRU(Cell) -> mollified gates; and finds the skip blocks."""

    name = "mollify"

    def __init__(self, config: MollifyConfig) -> None:
        super().__init__(config.kinds, recurrent=config.recurrent)
        self.config = config
        self.layers: dict[str, int] = {}
        self.blocks: list[Group] = []

    def prepare(self, context: SurgeryContext) -> None:
        super().prepare(context)
        layer = 1
        for site in execution_order(context.sites, context.graph):
            self.layers[site.name] = layer
            layer += int(getattr(site.module, "num_layers", 1)) if self.is_recurrent(site) else 1
        if self.config.skip:
            self.blocks = self._find_blocks(context)

    def _find_blocks(self, context: SurgeryContext) -> list[Group]:
        root, graph = context.root, context.graph
        activations = {s.name for s in context.sites if s.source == "module" and not self.is_recurrent(s)}
        count: dict[int, int] = {}
        for _, module in root.named_modules(remove_duplicate=False):
            count[id(module)] = count.get(id(module), 0) + 1
        # Without rewritten calls the model keeps its own forward, so a Sequential must be run as a whole for a
        # restructured Sequential to mean the same thing; a GraphModule calls children by name instead.
        by_name = isinstance(root, fx.GraphModule) or any(s.source != "module" for s in context.sites)
        blocks: list[Group] = []
        for owner, seq in root.named_modules():
            if not isinstance(seq, nn.Sequential):
                continue
            children = list(seq.named_children())
            i = 0
            while i < len(children):
                unit_dim = _block_start(children[i][1])
                j = i + 1
                while unit_dim is not None and j < len(children) and isinstance(children[j][1], _BLOCK_INNER):
                    j += 1
                if unit_dim is None or j >= len(children) or _join(owner, children[j][0]) not in activations:
                    i += 1
                    continue
                keys = [k for k, _ in children[i:j + 1]]
                names = [_join(owner, k) for k in keys]
                shared = any(count[id(m)] > 1 for _, m in children[i:j + 1])
                if not shared and (graph is None or self._chained(graph, owner, names, by_name)):
                    blocks.append(Group(owner, keys, self, info={"unit_dim": unit_dim}))
                i = j + 1
        return blocks

    @staticmethod
    def _chained(graph: fx.Graph, owner: str, names: list[str], by_name: bool) -> bool:
        """Each module of the run is called once, on the previous one's result alone, and only feeds the next."""
        nodes = []
        for name in names:
            calls = [n for n in graph.nodes if n.op == "call_module" and str(n.target) == name]
            if len(calls) != 1:
                return False
            nodes.append(calls[0])
        for prev, node in zip(nodes, nodes[1:]):
            if node.args != (prev,) or node.kwargs or list(prev.users) != [node]:
                return False
        # If user code calls the children one by one, its own forward would ignore a wrapper.
        return by_name or not owner or all(owner in (n.meta.get("nn_module_stack") or {}) for n in nodes)

    def build(self, site: Site) -> nn.Module:
        layer = self.layers[site.name]
        if self.is_recurrent(site):
            gate_kwargs = {"p": self.config.p, "c": self.config.c, "eval_noise": self.config.eval_noise,
                           "shared": self.config.shared}
            new = self.recurrent_replacement(site, "mollified", gate_kwargs)
            groups = new.gate_activations
            # One annealer layer per RNN layer, numbered upwards from the site's first number.
            for offset, group in enumerate(groups if isinstance(groups, nn.ModuleList) else [groups]):
                group.layer = layer + offset
            return new
        num_features, unit_dim, shared = self.units_of(site)
        return self.placed(MollifiedActivation(
            kind=activation_kind(site, self.kinds), p=self.config.p, c=self.config.c, num_features=num_features,
            unit_dim=unit_dim, shared=shared or self.config.shared, layer=layer, eval_noise=self.config.eval_noise))

    def groups(self) -> list[Group]:
        return self.blocks

    def build_group(self, group: Group, run: nn.Sequential) -> Replacement:
        activation = run[-1]
        assert isinstance(activation, MollifiedActivation)
        skip = StochasticSkip(run, p=self.config.p, unit_dim=group.info["unit_dim"], eval_mode=self.config.eval_mode,
                              layer=activation.layer)
        note = f"stochastic skip of eqs. 4.27–4.30 around {', '.join(group.keys)} of {group.owner or '(model)'}"
        return Replacement(skip, note=note)


def mollify(model: nn.Module, config: MollifyConfig | None = None, *, include: Pattern = None,
            exclude: Pattern = None, filter_fn: FilterFn | None = None, inplace: bool = False,
            **options: Any) -> nn.Module:
    """Make ``model`` a mollifying network (thesis §4.4): mollified activations plus stochastic skips.

    ``config`` is a :class:`~surgeon.configs.MollifyConfig`, or None with its fields as keyword ``options``
    (``mollify(model, c=50)`` is ``mollify(model, MollifyConfig(c=50))``): ``c`` is the noise scale of
    eq. 4.25; ``kinds`` the activations mollified (``"sigmoid"``, ``"tanh"``, ``"relu"``); ``recurrent=True``
    also gives ``nn.LSTM``/``nn.GRU``/cells mollified gates; ``skip=True`` wraps every block (see the module
    docstring for the definition) in :class:`~surgeon.noise.StochasticSkip` (eqs. 4.27–4.30); ``p`` is the
    initial noise level (1.0 = the start of annealing, where every block is skipped and every activation is
    linear). Layers are numbered from the input for the per-layer rates of eq. 4.31.

    ``include`` / ``exclude`` / ``filter_fn`` select activation and recurrent sites by their names in the
    original model, as in :func:`surgeon.convert`; a block is wrapped iff its activation is selected. Returns the
    model with a :class:`~surgeon.surgery.record.SurgeryRecord` appended; its changes list each activation under
    its final name and each StochasticSkip. Typical use::

        model = surgeon.mollify(model)
        annealer = surgeon.noise.Annealer(model, schedule="loss-exp")
        ...; optimizer.step(); annealer.step(loss)
    """
    config = make_config("mollify", "mollify" if config is None else config, options, "config")
    return run_transform(model, config, Call(include, exclude, filter_fn, inplace=inplace))


@register_transform(MollifyConfig)
def _mollify_with(model: nn.Module, config: MollifyConfig, call: Call) -> nn.Module:
    return apply_surgery(model, [MollifyRule(config)], config=config, **call.selection(), inplace=call.inplace,
                         quiet=call.quiet)
