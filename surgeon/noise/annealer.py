"""Noise annealing schedules for noisy and mollified networks (thesis §4.3.6.6, §4.4.3.3).

``Annealer(model, schedule, **kw)`` finds every :class:`~surgeon.noise.base.NoiseModule` in ``model``
and, on each ``step(loss=None)`` (call it once per parameter update, after ``optimizer.step()``),
writes the new noise into them. It follows ``torch.optim.lr_scheduler`` conventions: the constructor
applies the values of step t = 0, ``get_last()`` returns the values last applied, and
``state_dict()``/``load_state_dict()`` make a resumed run identical to an uninterrupted one.

Layers. Each module's ``layer`` attribute is its 1-based index l; modules with ``layer=None`` are
numbered in ``model.modules()`` order (only modules the schedule drives, or groups enclosing
them, take a number), except that a noise module nested inside another one (a
mollified activation inside a :class:`StochasticSkip`, the gate activations of one RNN layer)
inherits the enclosing module's index. L is the largest index unless ``num_layers`` is given.

Schedules (``t`` is the number of ``step`` calls so far):

* ``"loss-exp"`` (eq. 4.31; sets ``p``): p_t^l = 1 − exp(−k v_t l / (t L)), v_t an exponential moving
  average of the loss (v_1 = loss_1, v_t = β v_{t−1} + (1 − β) loss_t; ``loss`` is required).
  Reading: p is the noise / skip probability of §4.4.3 (p = 1 identity/linear, p = 0 the full layer).
  At t → 0 the exponent diverges so p → 1 for every layer, matching "all layers start at p = 1";
  the factor l makes lower layers' p smaller, i.e. they anneal faster, as the thesis intends. The
  thesis prints v_t^l; the slides (and SPEC) print v_t·l — only the latter gives lower layers a
  faster schedule, so it is used. Stop rule ``delta`` (None = never stop), read by ``stop_on``:

  - ``"sum-p"`` (default, the thesis' words: annealing stops when "Σ_l p_t^l reaches δ"): p falls from 1
    towards 0, so Σ_l p starts at L and the schedule freezes once Σ_l p_t^l ≤ δ;
  - ``"expected-depth"``: p is a *skip* probability, so the expected number of active layers is
    Σ_l (1 − p_t^l); freeze once it is ≥ δ (the same as Σ_l p ≤ L − δ).

  After stopping the values stay frozen.
* ``"linear"`` / ``"sqrt"`` (mollifying-networks slides; sets ``p``): p_t = max(p_min, 1 − t/N) and
  max(p_min, 1 − sqrt(t/N)), N = ``total_steps``. The slides print min(p_min, ·), which would pin p
  at p_min from the first step and let it go negative; max() is the evident intent. Same p for all
  layers.
* ``"inv-sqrt"`` (§4.3.6.6; sets ``c``): c_t = max(c_min, c0 / sqrt(n + 1)), n = ⌊t / every⌋,
  defaults c0 = 30, c_min = 0.5, every = 200. ``continuous=True`` drops the floor: n = t / every with
  ``every`` any positive number — the thesis' curve on a time scale fitted to a shorter run (see
  :func:`inv_sqrt_every`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgeon.noise.base import NoiseModule

__all__ = ["SCHEDULES", "STOP_RULES", "Annealer", "inv_sqrt_every"]

SCHEDULES: tuple[str, ...] = ("loss-exp", "linear", "sqrt", "inv-sqrt")
#: Readings of the loss-exp stop rule ``delta`` (see the module docstring).
STOP_RULES: tuple[str, ...] = ("sum-p", "expected-depth")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "loss-exp": {"k": 100.0, "beta": 0.9, "delta": None, "stop_on": "sum-p", "num_layers": None},
    "linear": {"total_steps": None, "p_min": 0.0},
    "sqrt": {"total_steps": None, "p_min": 0.0},
    "inv-sqrt": {"c0": 30.0, "c_min": 0.5, "every": 200, "continuous": False},
}


def inv_sqrt_every(c0: float, c_min: float, floor_step: float) -> float:
    """The continuous ``every`` for which c0 / sqrt(t / every + 1) reaches c_min at update ``floor_step``.

    c0 / sqrt(T / e + 1) = c_min  ⇔  e = T / ((c0 / c_min)² − 1). The thesis (c0 = 30, c_min = 0.5, every = 200)
    reaches its floor at update 200·3599 ≈ 720,000; a run of N updates keeps that shape with floor_step ≈ 0.8 N.
    """
    if not 0 < c_min < c0 or floor_step <= 0:
        raise ValueError("inv_sqrt_every needs 0 < c_min < c0 and floor_step > 0")
    return float(floor_step) / ((c0 / c_min) ** 2 - 1.0)


class Annealer:
    """Sets the noise of the noisy/mollified modules of ``model`` at every update.

    Args:
        model: the network containing :class:`NoiseModule` instances.
        schedule: one of ``"loss-exp"``, ``"linear"``, ``"sqrt"``, ``"inv-sqrt"``.
        **kw: schedule hyperparameters — loss-exp: ``k`` (100.0), ``beta`` (0.9, loss EMA factor),
            ``delta`` (None = never stop), ``stop_on`` ("sum-p": stop once Σ_l p ≤ δ, the thesis' rule;
            "expected-depth": once Σ_l (1 − p) ≥ δ), ``num_layers`` (None = largest layer index);
            linear/sqrt: ``total_steps`` (required), ``p_min`` (0.0);
            inv-sqrt: ``c0`` (30), ``c_min`` (0.5), ``every`` (200), ``continuous`` (False).
    """

    def __init__(self, model: nn.Module, schedule: str = "loss-exp", **kw: Any) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        unknown = set(kw) - set(_DEFAULTS[schedule])
        if unknown:
            raise TypeError(f"unknown arguments for schedule {schedule!r}: {sorted(unknown)}")
        self.model = model
        self.schedule = schedule
        self.hparams: dict[str, Any] = {**_DEFAULTS[schedule], **kw}
        self._validate()
        self.targets = self._find_targets(model)
        if not self.targets:
            raise ValueError(
                f"no module of {model.__class__.__name__} has a noise {self._attr_name()} to anneal"
            )
        self.layer_ids: list[int] = sorted({layer for _, _, layer in self.targets})
        self.t = 0
        self.v: float | None = None
        self.stopped = False
        self._last: list[float] = self._compute()
        self._apply(self._last)

    # ------------------------------------------------------------------ setup
    def _validate(self) -> None:
        h = self.hparams
        if self.schedule == "loss-exp":
            if h["k"] < 0:
                raise ValueError("k must be >= 0")
            if not 0.0 <= h["beta"] < 1.0:
                raise ValueError("beta must lie in [0, 1)")
            if h["stop_on"] not in STOP_RULES:
                raise ValueError(f"stop_on must be one of {STOP_RULES}, got {h['stop_on']!r}")
        elif self.schedule in ("linear", "sqrt"):
            if h["total_steps"] is None or h["total_steps"] <= 0:
                raise ValueError(f"schedule {self.schedule!r} needs total_steps > 0")
            if not 0.0 <= h["p_min"] <= 1.0:
                raise ValueError("p_min must lie in [0, 1]")
        else:
            if h["c0"] < 0 or h["c_min"] < 0 or not (h["every"] > 0 if h["continuous"] else int(h["every"]) >= 1):
                raise ValueError("inv-sqrt needs c0 >= 0, c_min >= 0 and every >= 1 (every > 0 if continuous)")

    def _attr_name(self) -> str:
        return "scale c" if self.schedule == "inv-sqrt" else "level p"

    def _find_targets(self, model: nn.Module) -> list[tuple[str, NoiseModule, int]]:
        """(name, module, layer) for every module this schedule drives, with layers resolved."""
        wants_scale = self.schedule == "inv-sqrt"
        noise_mods = [(n, m) for n, m in model.named_modules() if isinstance(m, NoiseModule)]
        driven = {n for n, m in noise_mods if (m.anneals_scale if wants_scale else m.anneals_level)}

        def relevant(name: str) -> bool:
            # Only modules that are driven, or enclose driven ones, consume a layer number.
            return name in driven or any(name == "" or d.startswith(name + ".") for d in driven)

        explicit = {m.layer for n, m in noise_mods if m.layer is not None and relevant(n)}
        resolved: dict[str, int] = {}
        next_layer = 1
        targets = []
        for name, mod in noise_mods:
            if not relevant(name):
                continue
            parent = max((n for n in resolved if n == "" or name.startswith(n + ".")), key=len, default=None)
            if mod.layer is not None:
                layer = mod.layer
            elif parent is not None and parent != name:
                layer = resolved[parent]
            else:
                while next_layer in explicit:
                    next_layer += 1
                layer = next_layer
                next_layer += 1
            resolved[name] = layer
            if name in driven:
                targets.append((name, mod, layer))
        return targets

    # ------------------------------------------------------------- schedules
    def _compute(self) -> list[float]:
        """Values for the current t, one per entry of ``layer_ids``."""
        h, t = self.hparams, self.t
        if self.schedule == "inv-sqrt":
            n = t / float(h["every"]) if h.get("continuous") else t // int(h["every"])
            c = max(h["c_min"], h["c0"] / math.sqrt(n + 1))
            return [float(c)] * len(self.layer_ids)
        if self.schedule in ("linear", "sqrt"):
            frac = t / h["total_steps"]
            p = 1.0 - (frac if self.schedule == "linear" else math.sqrt(frac))
            return [float(min(1.0, max(h["p_min"], p)))] * len(self.layer_ids)
        if t == 0 or self.v is None:
            return [1.0] * len(self.layer_ids)
        n_layers = h["num_layers"] or max(self.layer_ids)
        # 1 − exp(−z) via expm1 keeps full precision when z is tiny (late in training).
        values = [-math.expm1(-h["k"] * self.v * layer / (t * n_layers)) for layer in self.layer_ids]
        # A negative loss (e.g. a continuous NLL) would give p < 0: p is a probability, so clip it.
        return [float(min(1.0, max(0.0, p))) for p in values]

    def _apply(self, values: list[float]) -> None:
        by_layer = dict(zip(self.layer_ids, values, strict=True))
        for _, mod, layer in self.targets:
            if self.schedule == "inv-sqrt":
                mod.set_noise_scale(by_layer[layer])
            else:
                mod.set_noise_level(min(1.0, max(0.0, by_layer[layer])))

    # ---------------------------------------------------------------- public
    def step(self, loss: float | torch.Tensor | None = None) -> list[float]:
        """Advance one update and write the new noise; returns :meth:`get_last`.

        ``loss`` feeds the moving average v_t of the ``loss-exp`` schedule (required there until a
        first value is known; ignored by the other schedules).
        """
        if self.stopped:
            self.t += 1
            return self.get_last()
        if self.schedule == "loss-exp":
            if loss is not None:
                value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
                if not math.isfinite(value):
                    raise ValueError(f"loss must be finite, got {value}")
                beta = self.hparams["beta"]
                self.v = value if self.v is None else beta * self.v + (1.0 - beta) * value
            elif self.v is None:
                raise ValueError("the 'loss-exp' schedule needs step(loss=...)")
        self.t += 1
        values = self._compute()
        self._last = values
        self._apply(values)
        delta = self.hparams.get("delta")
        if self.schedule == "loss-exp" and delta is not None:
            if self.hparams.get("stop_on", "sum-p") == "sum-p":
                self.stopped = sum(values) <= delta
            else:
                self.stopped = sum(1.0 - p for p in values) >= delta
        return self.get_last()

    def get_last(self) -> list[float]:
        """The values last applied, one per layer in ``layer_ids`` order (p, or c for inv-sqrt)."""
        return list(self._last)

    @property
    def expected_depth(self) -> float:
        """Σ_l (1 − p^l): the expected number of non-skipped layers (p schedules only)."""
        if self.schedule == "inv-sqrt":
            raise TypeError("expected depth is defined for the p schedules only")
        return float(sum(1.0 - p for p in self._last))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (the model is not included)."""
        return {
            "schedule": self.schedule,
            "hparams": dict(self.hparams),
            "layer_ids": list(self.layer_ids),
            "t": self.t,
            "v": self.v,
            "stopped": self.stopped,
            "last": list(self._last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` and re-apply its values to the modules."""
        if state["schedule"] != self.schedule:
            raise ValueError(
                f"state is for schedule {state['schedule']!r}, this annealer runs {self.schedule!r}"
            )
        if list(state["layer_ids"]) != self.layer_ids:
            raise ValueError(f"state has layers {state['layer_ids']}, the model has {self.layer_ids}")
        self.hparams = dict(state["hparams"])
        self.t = int(state["t"])
        self.v = None if state["v"] is None else float(state["v"])
        self.stopped = bool(state["stopped"])
        self._last = [float(x) for x in state["last"]]
        self._apply(self._last)

    def __repr__(self) -> str:
        return (
            f"Annealer(schedule={self.schedule!r}, t={self.t}, layers={self.layer_ids}, "
            f"last={[round(x, 6) for x in self._last]})"
        )
