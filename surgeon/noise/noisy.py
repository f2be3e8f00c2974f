"""Noisy hard-saturating activations (thesis §4.3.4–4.3.5, Algorithm 1).

Modes (``mode=``):

* ``"nan"`` / ``"nah"`` — noise at the output, normal / half-normal (eqs. 4.9–4.17)::

      Δ(x) = h(x) − u(x)
      σ(x) = c · (sigmoid(p · Δ(x)) − 0.5)²                       p learned per unit, U[−1, 1]
      d(x) = −sgn(x) · sgn(1 − α)
      φ(x) = α h(x) + (1 − α) u(x) + d(x) σ(x) ε                  ε = ξ (nan) or |ξ| (nah), ξ ~ N(0, 1)

  In eval mode ε is replaced by E[ε]: 0 (nan) or sqrt(2/π) (nah), eq. 4.17.
* ``"nani"``  — φ = h(x + c ξ), a fixed input-noise std c (eq. 4.18).
* ``"nanil"`` — φ = h(x + σ(x) ξ) with σ(x) learned as in eq. 4.10 (thesis §4.3.5: "σ can be
  learned as in Eqn 4.10").
* ``"nanis"`` — φ = h(x + 1[|x| ≥ x_t] c ξ), noise only where h saturates (eq. 4.19).

For the input-noise modes the eval output is h(x) (ξ replaced by its mean 0, as the authors'
code does). Noise is drawn only in training mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgeon.layers.checks import require_floating
from surgeon.noise.base import HALF_NORMAL_MEAN, PerUnitNoiseModule, compute_dtype
from surgeon.noise.hard import (
    HARD_SIGMOID_THRESHOLD,
    HARD_TANH_THRESHOLD,
    hard_sigmoid,
    hard_tanh,
    lin_sigmoid,
    lin_tanh,
    sgn,
)

__all__ = ["NOISY_MODES", "NoisyHardSigmoid", "NoisyHardTanh"]

NOISY_MODES: tuple[str, ...] = ("nan", "nah", "nani", "nanil", "nanis")
_LEARNED_P_MODES = ("nan", "nah", "nanil")


class _NoisyHard(PerUnitNoiseModule):
    """Shared implementation; subclasses fix h, u, the threshold and the default hyperparameters."""

    anneals_scale = True
    _scalar_buffers = ("c",)

    _h: Callable[[torch.Tensor], torch.Tensor]
    _replaces: tuple[type[nn.Module], ...]
    _u: Callable[[torch.Tensor], torch.Tensor]
    _threshold: float
    _default_mode: str
    _default_alpha: float
    # Per-mode default c (thesis §4.3.6 / authors' nunits.py); documented on the subclasses.
    _default_c: dict[str, float]

    def __init__(
        self,
        mode: str | None = None,
        c: float | None = None,
        alpha: float | None = None,
        num_features: int | None = None,
        unit_dim: int = -1,
        shared: bool = False,
        layer: int | None = None,
    ) -> None:
        super().__init__(
            num_features=num_features, unit_dim=unit_dim, shared=shared, init_bound=1.0, layer=layer
        )
        mode = self._default_mode if mode is None else str(mode).lower()
        if mode not in NOISY_MODES:
            raise ValueError(f"mode must be one of {NOISY_MODES}, got {mode!r}")
        self.mode = mode
        self.alpha = float(self._default_alpha if alpha is None else alpha)
        c_value = float(self._default_c[mode] if c is None else c)
        if c_value < 0:
            raise ValueError(f"c must be >= 0, got {c_value}")
        self.register_buffer("c", torch.tensor(c_value, dtype=torch.float64))
        if mode in _LEARNED_P_MODES:
            self._register_unit_param("p")

    def _sigma(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """σ(x) = c (sigmoid(p Δ(x)) − 0.5)² (eq. 4.10)."""
        p = self.unit_view(self.p.to(x.dtype), x)
        return self.c.to(x.dtype) * (torch.sigmoid(p * delta) - 0.5).square()

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Apply φ elementwise. x: any shape (units along ``unit_dim``); returns x's shape and dtype.

        ``noise`` optionally supplies ξ ~ N(0, 1) (same shape as x); by default it is drawn with
        ``torch.randn_like``. It is ignored in eval mode.
        """
        require_floating(x, self)
        out_dtype = x.dtype
        x = x.to(compute_dtype(x))
        xi = None
        if self.training:
            xi = torch.randn_like(x) if noise is None else noise.to(x.dtype)
        h = self._h(x)
        mode = self.mode
        if mode in ("nan", "nah"):
            u = self._u(x)
            delta = h - u
            sigma = self._sigma(x, delta)
            sign_1ma = 1.0 if 1.0 - self.alpha >= 0 else -1.0
            d = -sgn(x) * sign_1ma
            if xi is None:
                eps_mean = 0.0 if mode == "nan" else HALF_NORMAL_MEAN
                noise_term = d * sigma * eps_mean
            else:
                noise_term = d * sigma * (xi if mode == "nan" else xi.abs())
            out = self.alpha * h + (1.0 - self.alpha) * u + noise_term
        elif xi is None:
            out = h
        elif mode == "nani":
            out = self._h(x + self.c.to(x.dtype) * xi)
        elif mode == "nanil":
            sigma = self._sigma(x, h - self._u(x))
            out = self._h(x + sigma * xi)
        else:  # nanis
            saturated = (x.abs() >= self._threshold).to(x.dtype)
            out = self._h(x + saturated * self.c.to(x.dtype) * xi)
        return out.to(out_dtype)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(mode=self.mode, c=float(self.c), alpha=self.alpha)
        if self.mode not in _LEARNED_P_MODES:
            cfg.update(num_features=None, shared=False)
        return cfg

    @classmethod
    def from_torch(cls, module: nn.Module | None = None, **kwargs: Any) -> _NoisyHard:
        """Build a replacement for ``nn.Sigmoid``/``nn.Tanh`` (or a bare function call site: pass None).

        The replaced module has no parameters, so nothing is copied; ``p`` is sized lazily.
        """
        if module is not None and not isinstance(module, cls._replaces):
            names = ", ".join(t.__name__ for t in cls._replaces)
            raise TypeError(f"{cls.__name__} replaces {names}, not {type(module).__name__}")
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, c={float(self.c):g}, alpha={self.alpha:g}, "
            f"num_features={self.num_features}, unit_dim={self.unit_dim}"
        )


class NoisyHardSigmoid(_NoisyHard):
    """Noisy hard-sigmoid φ(x) built on h = clip(0.25x + 0.5, 0, 1), u = 0.25x + 0.5, x_t = 2.

    Defaults (authors' ``NSigmoidP``): mode ``"nah"`` (half-normal), α = 1.1, c = 0.15; NANI c = 0.05,
    NANIS c = 0.25, NANIL c = 0.5 (thesis Table 4.3). Args: ``mode``, ``c`` (noise scale, a buffer
    an annealer may set), ``alpha``, ``num_features`` (None = lazy), ``unit_dim`` (-1: last dim;
    1: channels of a conv map), ``shared`` (one scalar p), ``layer`` (annealer layer index).
    """

    _h = staticmethod(hard_sigmoid)
    _replaces = (nn.Sigmoid, nn.Hardsigmoid)
    _u = staticmethod(lin_sigmoid)
    _threshold = HARD_SIGMOID_THRESHOLD
    _default_mode = "nah"
    _default_alpha = 1.1
    _default_c = {"nan": 0.15, "nah": 0.15, "nani": 0.05, "nanil": 0.5, "nanis": 0.25}


class NoisyHardTanh(_NoisyHard):
    """Noisy hard-tanh φ(x) built on h = clip(x, −1, 1), u = x, x_t = 1.

    Defaults (authors' ``NTanhP``): mode ``"nan"`` (normal), α = 1.15, c = 0.5; NANI c = 0.05,
    NANIS c = 0.25, NANIL c = 0.5 (thesis Table 4.3). Arguments as for :class:`NoisyHardSigmoid`.
    """

    _h = staticmethod(hard_tanh)
    _replaces = (nn.Tanh, nn.Hardtanh)
    _u = staticmethod(lin_tanh)
    _threshold = HARD_TANH_THRESHOLD
    _default_mode = "nan"
    _default_alpha = 1.15
    _default_c = {"nan": 0.5, "nah": 0.5, "nani": 0.05, "nanil": 0.5, "nanis": 0.25}
