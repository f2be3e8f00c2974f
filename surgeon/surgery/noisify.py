"""``noisify``: replace sigmoid / tanh (modules, calls, methods, and the gates of LSTM/GRU) with noisy units.

Thesis §4.3 (Algorithm 1). With h the hard-saturating base and u its linearisation at 0 (eqs. 4.1–4.4)::

    hard-sigmoid(x) = clip(0.25 x + 0.5, 0, 1),   hard-tanh(x) = clip(x, −1, 1)
    Δ(x) = h(x) − u(x),   σ(x) = c · (sigmoid(p · Δ(x)) − 0.5)²          (eq. 4.10, p learned per unit)
    φ(x, ξ) = α h(x) + (1 − α) u(x) + d(x) σ(x) ε,   d(x) = −sgn(x) sgn(1 − α)   (eq. 4.16)
    ε = ξ (NAN) or |ξ| (NAH); in eval mode ε → E[ε] = 0 or sqrt(2/π)            (eq. 4.17)

The thesis replaced *all* sigmoid/tanh of existing models, the gates of the recurrent layers included
(§4.3.6), so this transform finds every form in which a model can apply them: ``nn.Sigmoid`` / ``nn.Tanh``
modules, ``torch.sigmoid`` / ``torch.tanh`` / ``F.sigmoid`` / ``F.tanh`` / ``torch.special.expit`` calls and
``x.sigmoid()`` / ``x.tanh()`` methods (the last two only when torch.fx can trace the model), and
``nn.LSTM`` / ``nn.GRU`` / ``nn.LSTMCell`` / ``nn.GRUCell`` (weights transferred to
:mod:`surgeon.noise.recurrent`). Walking, fallback, selection and records are the shared engine's
(:mod:`surgeon.surgery.engine`).
The activation-site helpers it shares with ``mollify`` live in :mod:`surgeon.surgery.activations`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgeon.configs.noise import NOISIFY_TARGETS, NoisifyConfig
from surgeon.errors import ConfigError
from surgeon.noise.noisy import NoisyHardSigmoid, NoisyHardTanh
from surgeon.surgery.activations import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    NOISE_LEAVES,
    RECURRENT,
    SHARED,
    ActivationRule,
    Units,
    activation_kind,
    reference_device,
    site_units,
)
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.rules import Site, SurgeryContext
from surgeon.surgery.select import FilterFn, Pattern
from surgeon.surgery.transform import Call, make_config, register_transform, run_transform

__all__ = ["NOISIFY_TARGETS", "noisify"]

class NoisifyRule(ActivationRule):
    """Sigmoid/tanh sites -> NoisyHardSigmoid/NoisyHardTanh; LSTM/GRU(Cell) -> noisy recurrent modules."""

    name = "noisify"

    def __init__(self, config: NoisifyConfig) -> None:
        self.config = config
        self.targets = config.targets
        self.module_types = tuple(ACTIVATION_MODULES[k] for k in self.targets) + (
            tuple(RECURRENT) if config.gates is not None else ())
        self.functions = tuple(f for k in self.targets for f in ACTIVATION_FUNCTIONS[k])
        self.methods = tuple(ACTIVATION_METHODS[k] for k in self.targets)
        self.unsupported = NOISE_LEAVES
        self.units: dict[str, Units] = {}
        self.device: torch.device | None = None

    def prepare(self, context: SurgeryContext) -> None:
        self.device = reference_device(context.root)
        for site in context.sites:
            if not (site.source == "module" and isinstance(site.module, tuple(RECURRENT))):
                self.units[site.name] = site_units(site, context.root, context.graph)

    def build(self, site: Site) -> nn.Module:
        if site.source == "module" and isinstance(site.module, tuple(RECURRENT)):
            cls = next(new for old, new in RECURRENT.items() if isinstance(site.module, old))
            return cls.from_torch(site.module, gates=self.config.gates, gate_kwargs=self.config.gate_options())
        kind = activation_kind(site, self.targets)
        num_features, unit_dim, shared = self.units.get(site.name, SHARED)
        cls = NoisyHardSigmoid if kind == "sigmoid" else NoisyHardTanh
        new = cls(mode=self.config.mode, c=self.config.c, alpha=self.config.alpha, num_features=num_features,
                  unit_dim=unit_dim, shared=shared or self.config.shared)
        return new if self.device is None else new.to(device=self.device)


@register_transform(NoisifyConfig)
def _noisify_with(model: nn.Module, config: NoisifyConfig, call: Call) -> nn.Module:
    return apply_surgery(model, [NoisifyRule(config)], config=config, **call.selection(), inplace=call.inplace,
                         quiet=call.quiet)


def noisify(model: nn.Module, config: NoisifyConfig | str | None = None, *, include: Pattern = None,
            exclude: Pattern = None, filter_fn: FilterFn | None = None, inplace: bool = False,
            **options: Any) -> nn.Module:
    """Replace the sigmoid / tanh units of ``model`` with noisy hard-saturating units (thesis §4.3).

    ``config`` is a :class:`~surgeon.configs.NoisifyConfig`, or None / the noise mode with the config's fields as
    keyword ``options``: ``noisify(model, "nah", c=0.3)`` is ``noisify(model, mode="nah", c=0.3)`` is
    ``noisify(model, NoisifyConfig(mode="nah", c=0.3))``. Sigmoid sites (``nn.Sigmoid``, ``torch.sigmoid``,
    ``F.sigmoid``, ``torch.special.expit``, ``x.sigmoid()``) become :class:`~surgeon.noise.NoisyHardSigmoid`, tanh sites
    :class:`~surgeon.noise.NoisyHardTanh`; ``c`` / ``alpha`` None pick the authors' defaults (sigmoid α = 1.1,
    c = 0.15; tanh α = 1.15, c = 0.5; NANI c = 0.05; NANIS c = 0.25). The learned per-unit ``p`` of eq. 4.10 is
    sized at surgery time from the layer that feeds the site (Linear / Conv / norm / recurrent output); a site
    whose size cannot be read off the model gets one shared scalar p.

    ``nn.LSTM`` / ``nn.GRU`` / ``nn.LSTMCell`` / ``nn.GRUCell`` become the :mod:`surgeon.noise.recurrent`
    modules with the same weights and gates ``config.gates``; ``gates=None`` leaves recurrent modules alone.

    ``include`` / ``exclude`` / ``filter_fn`` select sites by name as in :func:`surgeon.convert`; when torch.fx
    cannot trace the model only modules are replaced and a :class:`~surgeon.errors.TraceFallbackWarning` names
    the calls left alone. Returns the model (its own class, or an ``fx.GraphModule`` when calls were rewritten)
    with a :class:`~surgeon.surgery.record.SurgeryRecord` appended to ``model.surgeon_records``.
    """
    if isinstance(config, str):
        if "mode" in options:
            raise ConfigError("noisify: give the mode once, positionally or as mode=")
        options["mode"] = config
    config = make_config("noisify", "noisify" if config is None or isinstance(config, str) else config, options,
                         "config")
    return run_transform(model, config, Call(include, exclude, filter_fn, inplace=inplace))
