""":class:`DistillConfig`: the options of :func:`surgeon.distill`, validated once (a typed config, so the record a
distillation appends replays like any other surgery step)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from surgeon.configs.base import TransformConfig

LOSSES = ("kl", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(TransformConfig):
    """``steps`` AdamW steps of ``batch_size`` rows at peak learning rate ``lr`` (cosine decay); ``loss`` "kl"
    (logits, temperature T, scaled by T²) or "mse"; ``features``: also match each replaced layer's output,
    weighted by ``feature_weight``; ``weight_decay`` on dense weights only; ``multipliers``: True for the thesis's
    learning-rate multipliers (ACDC a ×24, d ×12, §3.10.7.2) or a mapping {role: factor}; ``warmup``: the share of
    the steps over which the learning rate rises linearly to ``lr`` before the cosine decay; ``keep_best``: hold out
    ``held_out`` of the inputs (rows of a tensor, or batches), measure the output loss on them at the start and
    ``checks`` times during the run, and return the student state that scored best (:mod:`surgeon.recovery.best`);
    ``seed`` for batches and the held-out split."""

    transform: ClassVar[str] = "distill"
    name: ClassVar[str] = "distill"

    steps: int = 200
    lr: float = 1e-3
    loss: str = "kl"
    temperature: float = 2.0
    features: bool = True
    feature_weight: float = 1.0
    batch_size: int = 64
    weight_decay: float = 0.0
    multipliers: Any = False
    warmup: float = 0.0
    keep_best: bool = True
    held_out: float = 0.1
    checks: int = 10
    seed: int = 0

    def check(self) -> None:
        super().check()
        self._integer("steps", at_least=1)
        self._number("lr", above=0)
        self._one_of("loss", LOSSES)
        self._number("temperature", above=0)
        self._flag("features")
        self._number("feature_weight", at_least=0)
        self._integer("batch_size", at_least=1)
        self._number("weight_decay", at_least=0)
        self._number("warmup", at_least=0, below=1)
        self._flag("keep_best")
        self._number("held_out", above=0, at_most=0.5)
        self._integer("checks", at_least=1)
        self._integer("seed")
        factors = self.multipliers
        if isinstance(factors, dict):
            if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for k, v in factors.items()):
                self._fail("multipliers", f"must map parameter roles to positive numbers; got {factors!r}")
            self._set("multipliers", {k: float(v) for k, v in factors.items()})
        elif not isinstance(factors, bool):
            self._fail("multipliers", f"must be True, False or a mapping {{role: factor}}; got {factors!r}")
