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

from torch import nn

from surgeon.configs.noise import NOISIFY_TARGETS, NoisifyConfig
from surgeon.errors import ConfigError
from surgeon.noise.noisy import NoisyHardSigmoid, NoisyHardTanh
from surgeon.surgery.activations import ActivationRule, activation_kind
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.rules import Site
from surgeon.surgery.select import FilterFn, Pattern
from surgeon.surgery.transform import Call, make_config, register_transform, run_transform

__all__ = ["NOISIFY_TARGETS", "noisify"]

class NoisifyRule(ActivationRule):
    """Sigmoid/tanh sites -> NoisyHardSigmoid/NoisyHardTanh; LSTM/GRU(Cell) -> noisy recurrent modules."""

    name = "noisify"

    def __init__(self, config: NoisifyConfig) -> None:
        super().__init__(config.targets, recurrent=config.gates is not None)
        self.config = config

    def build(self, site: Site) -> nn.Module:
        if self.is_recurrent(site):
            return self.recurrent_replacement(site, self.config.gates, self.config.gate_options())
        num_features, unit_dim, shared = self.units_of(site)
        cls = NoisyHardSigmoid if activation_kind(site, self.kinds) == "sigmoid" else NoisyHardTanh
        return self.placed(cls(mode=self.config.mode, c=self.config.c, alpha=self.config.alpha,
                               num_features=num_features, unit_dim=unit_dim, shared=shared or self.config.shared))


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
