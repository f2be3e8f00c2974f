"""Configs of ``surgeon.noisify`` (thesis §4.3, noisy activation functions) and ``surgeon.mollify`` (§4.4)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from surgeon.configs.base import TransformConfig
from surgeon.noise.mollified import DEFAULT_C as DEFAULT_MOLLIFY_C
from surgeon.noise.mollified import EVAL_NOISE, MOLLIFIED_KINDS
from surgeon.noise.noisy import NOISY_MODES
from surgeon.noise.recurrent import GATE_KINDS
from surgeon.noise.skip import EVAL_MODES

#: The activation kinds noisify replaces.
NOISIFY_TARGETS: tuple[str, ...] = ("sigmoid", "tanh")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoisifyConfig(TransformConfig):
    """Noisy hard-saturating units for sigmoid / tanh (Algorithm 1, eqs. 4.9–4.19).

    ``mode``: the noise form (``"nan"``, ``"nah"``, ``"nani"``, ``"nanil"``, ``"nanis"``); ``c`` / ``alpha``:
    noise scale and slope mix, None for the authors' defaults of each unit; ``targets``: the activation kinds
    replaced; ``gates``: what the gates of ``nn.LSTM`` / ``nn.GRU`` (and cells) become (``"noisy"``,
    ``"hard"``, ``"soft"``, ``"mollified"``, or None to leave recurrent modules alone); ``shared``: one
    scalar p for all units of a site instead of one per unit; ``gate_kwargs``: options passed to the gate
    activations, overriding the ones derived from ``mode`` / ``c`` / ``alpha``.
    """

    transform: ClassVar[str] = "noisify"
    name: ClassVar[str] = "noisify"

    mode: str = "nah"
    targets: tuple[str, ...] = NOISIFY_TARGETS
    c: float | None = None
    alpha: float | None = None
    gates: str | None = "noisy"
    shared: bool = False
    gate_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        super().check()
        if isinstance(self.mode, str):
            self._set("mode", self.mode.lower())
        self._one_of("mode", NOISY_MODES)
        self._subset("targets", NOISIFY_TARGETS)
        self._number("c", at_least=0, optional=True)
        self._number("alpha", optional=True)
        self._one_of("gates", (*GATE_KINDS, None))
        self._flag("shared")
        self._check_gate_kwargs()

    def _check_gate_kwargs(self) -> None:
        value = self.gate_kwargs
        try:
            ok = isinstance(value, dict) and all(isinstance(k, str) for k in value) and json.dumps(value) != ""
        except (TypeError, ValueError):
            ok = False
        if not ok:
            self._fail("gate_kwargs", f"must be a JSON-able mapping of option names to values; got {value!r}")
        self._set("gate_kwargs", dict(value))

    def gate_options(self) -> dict[str, Any]:
        """The keyword arguments of the gate activations (noisy gates follow ``mode`` / ``c`` / ``alpha``)."""
        options: dict[str, Any] = {}
        if self.gates == "noisy":
            options["mode"] = self.mode
            options.update({k: v for k, v in (("c", self.c), ("alpha", self.alpha)) if v is not None})
        return {**options, **self.gate_kwargs}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MollifyConfig(TransformConfig):
    """Mollified activations plus stochastic skips (§4.4, Algorithm 2 and eqs. 4.27–4.30).

    ``c``: the noise scale of eq. 4.25; ``p``: the initial noise level (1.0 is the start of annealing: every
    block skipped, every activation linear); ``kinds``: the activations mollified; ``recurrent``: also give
    LSTM/GRU (and cells) mollified gates; ``skip``: wrap each block in a StochasticSkip; ``eval_noise``
    (``"mean"`` / ``"none"``, see MollifiedActivation), ``eval_mode`` (``"expectation"`` / ``"full"``, see
    StochasticSkip), ``shared``: one ``a`` per layer.
    """

    transform: ClassVar[str] = "mollify"
    name: ClassVar[str] = "mollify"

    c: float = DEFAULT_MOLLIFY_C
    skip: bool = True
    kinds: tuple[str, ...] = MOLLIFIED_KINDS
    recurrent: bool = True
    p: float = 1.0
    eval_noise: str = "mean"
    eval_mode: str = "expectation"
    shared: bool = False

    def check(self) -> None:
        super().check()
        self._number("c", at_least=0)
        self._flag("skip")
        self._flag("recurrent")
        self._subset("kinds", MOLLIFIED_KINDS, nonempty=not self.recurrent)
        self._number("p", at_least=0, at_most=1)
        self._one_of("eval_noise", EVAL_NOISE)
        self._one_of("eval_mode", EVAL_MODES)
        self._flag("shared")
