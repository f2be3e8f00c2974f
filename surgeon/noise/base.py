"""Common base for modules whose noise an :class:`~surgeon.noise.annealer.Annealer` controls.

Two annealable quantities exist in the thesis:

* the noise *scale* ``c`` of noisy activations (eq. 4.10, annealed as c0/sqrt(t+1) in §4.3.6.6), and
* the per-layer noise *level* ``p^l`` in [0, 1] of mollifying networks (eqs. 4.25, 4.30, 4.31).

Both are stored as 0-d float64 buffers (exact Python floats; cast to the input dtype when used)
so that a checkpoint keeps the annealed value. The
superscript in ``p^l`` is the layer index, not an exponent (thesis §4.4.3: "each layer ... has a
scalar hyperparameter p^l").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from surgeon.layers.checks import require_floating

__all__ = ["NoiseModule", "PerUnitNoiseModule", "HALF_NORMAL_MEAN", "compute_dtype"]

#: E|xi| for xi ~ N(0, 1): the mean of a half-normal variable (thesis, text after eq. 4.17).
HALF_NORMAL_MEAN: float = math.sqrt(2.0 / math.pi)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype used internally: fp16/bf16 inputs are promoted to fp32 (0.25·x, x·p and c·σ·ξ can overflow)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


class NoiseModule(nn.Module):
    """Base class (and the discovery protocol) of every annealable module in :mod:`surgeon.noise`.

    Subclasses set the class flags ``anneals_scale`` (module owns a ``c`` buffer) and/or
    ``anneals_level`` (module owns a ``p`` buffer in [0, 1]). ``layer`` is the 1-based index
    ``l`` used by the per-layer schedule of eq. 4.31; ``None`` lets the annealer number layers in
    module order (a noise module nested in another one inherits the outer module's layer).
    A module with both flags False is a pure *layer group* (e.g. one layer of a noisy LSTM).
    """

    anneals_scale: bool = False
    anneals_level: bool = False
    # Buffers that accept plain Python numbers on assignment (``m.c = 0.5``) for convenience.
    _scalar_buffers: tuple[str, ...] = ()

    def __init__(self, layer: int | None = None) -> None:
        super().__init__()
        if layer is not None and int(layer) < 1:
            raise ValueError(f"layer must be >= 1 (1-based as in eq. 4.31), got {layer}")
        self.layer = None if layer is None else int(layer)

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in self._scalar_buffers
            and isinstance(value, (int, float))
            and name in self.__dict__.get("_buffers", {})
        ):
            with torch.no_grad():
                self._buffers[name].fill_(float(value))
            return
        super().__setattr__(name, value)

    def set_noise_scale(self, c: float) -> None:
        """Set the noise scale ``c`` (used by the ``inv-sqrt`` schedule)."""
        if not self.anneals_scale:
            raise TypeError(f"{type(self).__name__} has no noise scale c")
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"noise scale c must be finite and >= 0, got {c}")
        with torch.no_grad():
            self._buffers["c"].fill_(float(c))

    def set_noise_level(self, p: float) -> None:
        """Set the layer noise level ``p^l`` in [0, 1] (used by the mollification schedules)."""
        if not self.anneals_level:
            raise TypeError(f"{type(self).__name__} has no noise level p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"noise level p must lie in [0, 1], got {p}")
        with torch.no_grad():
            self._buffers["p"].fill_(float(p))

    @property
    def noise_scale(self) -> float:
        """Current ``c`` as a Python float (synchronises with the device; not for the hot path)."""
        if not self.anneals_scale:
            raise TypeError(f"{type(self).__name__} has no noise scale c")
        return float(self._buffers["c"])

    @property
    def noise_level(self) -> float:
        """Current ``p^l`` as a Python float (synchronises with the device; not for the hot path)."""
        if not self.anneals_level:
            raise TypeError(f"{type(self).__name__} has no noise level p")
        return float(self._buffers["p"])

    def config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs that rebuild an equivalent module."""
        return {"layer": self.layer}


class PerUnitNoiseModule(LazyModuleMixin, NoiseModule):
    """A :class:`NoiseModule` holding one learned parameter per *unit* (e.g. ``p`` of eq. 4.10).

    The unit dimension is ``unit_dim`` of the input: -1 for ``(batch, features)`` and
    ``(batch, seq, features)``, 1 for channel-first conv maps ``(N, C, H, W)``. The parameter has
    shape ``(num_features,)`` and broadcasts against that dimension. ``num_features=None`` sizes it
    lazily from the first input (so the module can replace a bare ``torch.sigmoid`` call);
    ``shared=True`` uses a single scalar for all units.
    """

    def __init__(
        self,
        num_features: int | None,
        unit_dim: int,
        shared: bool,
        init_bound: float,
        layer: int | None,
    ) -> None:
        super().__init__(layer=layer)
        self.unit_dim = int(unit_dim)
        self.shared = bool(shared)
        self.init_bound = float(init_bound)
        self._unit_param_name: str | None = None
        if num_features is not None and int(num_features) < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self._requested_features = None if num_features is None else int(num_features)

    def _register_unit_param(self, name: str) -> None:
        self._unit_param_name = name
        if self.shared:
            param: nn.Parameter = nn.Parameter(torch.empty(()))
        elif self._requested_features is None:
            param = UninitializedParameter()
        else:
            param = nn.Parameter(torch.empty(self._requested_features))
        self.register_parameter(name, param)
        if not isinstance(param, UninitializedParameter):
            self._init_unit_param()

    def _init_unit_param(self) -> None:
        assert self._unit_param_name is not None
        with torch.no_grad():
            getattr(self, self._unit_param_name).uniform_(-self.init_bound, self.init_bound)

    def reset_parameters(self) -> None:
        """Redraw the per-unit parameter from U[-bound, bound] (no-op while still lazy)."""
        if self._unit_param_name is None:
            return
        if not isinstance(getattr(self, self._unit_param_name), UninitializedParameter):
            self._init_unit_param()

    def _unit_axis(self, x: torch.Tensor) -> int:
        if x.dim() == 0:
            raise ValueError(f"{type(self).__name__} with per-unit parameters needs at least a 1-d input")
        axis = self.unit_dim if self.unit_dim >= 0 else x.dim() + self.unit_dim
        if not 0 <= axis < x.dim():
            raise ValueError(
                f"unit_dim={self.unit_dim} is out of range for an input of shape {tuple(x.shape)}"
            )
        return axis

    def initialize_parameters(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """LazyModuleMixin hook: size the per-unit parameter from ``x.shape[unit_dim]``."""
        if self._unit_param_name is None:
            return
        param = getattr(self, self._unit_param_name)
        if isinstance(param, UninitializedParameter):
            with torch.no_grad():
                param.materialize((x.shape[self._unit_axis(x)],))
            self._init_unit_param()

    @property
    def num_features(self) -> int | None:
        """Number of units (``None`` while lazy or when the parameter is shared)."""
        if self.shared or self._unit_param_name is None:
            return None
        param = getattr(self, self._unit_param_name)
        if isinstance(param, UninitializedParameter):
            return None
        return int(param.shape[0])

    def noisy_input(self, x: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` in its compute dtype (fp32 for 16-bit inputs) and the ξ ~ N(0, 1) of x's shape that training
        mode uses (``noise`` when given, else drawn; None in eval mode)."""
        require_floating(x, self)
        x = x.to(compute_dtype(x))
        if not self.training:
            return x, None
        return x, torch.randn_like(x) if noise is None else noise.to(x.dtype)

    def unit_view(self, param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Reshape a ``(num_features,)`` parameter so it broadcasts along ``unit_dim`` of ``x``."""
        if param.dim() == 0:
            return param
        axis = self._unit_axis(x)
        if x.shape[axis] != param.shape[0]:
            raise ValueError(
                f"{type(self).__name__} has {param.shape[0]} units but the input has {x.shape[axis]} "
                f"along unit_dim={self.unit_dim} (shape {tuple(x.shape)})"
            )
        return param.reshape((-1,) + (1,) * (x.dim() - axis - 1))

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(num_features=self.num_features, unit_dim=self.unit_dim, shared=self.shared)
        return cfg
