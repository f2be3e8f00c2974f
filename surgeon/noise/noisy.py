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
from typing import Any, NamedTuple

import torch
from torch import nn

from surgeon.noise.base import HALF_NORMAL_MEAN, PerUnitNoiseModule
from surgeon.noise.hard import (
    HARD_SIGMOID_THRESHOLD,
    HARD_TANH_THRESHOLD,
    hard_sigmoid,
    hard_tanh,
    lin_sigmoid,
    lin_tanh,
    sgn,
)

__all__ = ["NOISY_MODES", "HardShape", "NoisyHardSigmoid", "NoisyHardTanh", "output_noise_phi",
           "output_noise_phi_parts"]

NOISY_MODES: tuple[str, ...] = ("nan", "nah", "nani", "nanil", "nanis")
_LEARNED_P_MODES = ("nan", "nah", "nanil")


class HardShape(NamedTuple):
    """The piecewise-linear part of φ: u(x) = slope·x + offset, h = clip(u, lo, hi), and α. Each field is a tensor
    broadcasting against x: 0-d for one module, or per unit for several modules applied side by side (the gates of
    a noisy LSTM, concatenated). ``minus_alpha_slope`` and ``minus_2slope`` serve the derivative."""

    slope: torch.Tensor
    offset: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    alpha: torch.Tensor
    minus_alpha_slope: torch.Tensor
    minus_2slope: torch.Tensor

    @staticmethod
    def of(modules: list[_NoisyHard], units: int, like: torch.Tensor) -> HardShape:
        """Per-unit fields for ``modules`` side by side, ``units`` each (0-d fields when ``units`` is 0)."""
        def field(get: Callable[[_NoisyHard], float]) -> torch.Tensor:
            values = torch.tensor([get(m) for m in modules], dtype=like.dtype, device=like.device)
            return values.squeeze(0) if units == 0 else values.repeat_interleave(units)

        return HardShape(field(lambda m: m._slope), field(lambda m: m._offset), field(lambda m: m._h_range[0]),
                         field(lambda m: m._h_range[1]), field(lambda m: m.alpha),
                         field(lambda m: -m.alpha * m._slope), field(lambda m: -2.0 * m._slope))


def output_noise_phi_parts(x: torch.Tensor, p: torch.Tensor,
                           noise: torch.Tensor | Callable[[torch.Tensor], torch.Tensor | None],
                           shape: HardShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """φ of the output-noise modes (eq. 4.15) and its derivatives, without autograd: (φ, ∂φ/∂x, ½ ∂φ/∂p).

    Arguments as for :class:`_OutputNoisePhi`, except that ``noise`` may also be a function of sgn(Δ) (x's shape)
    that draws it where it is used, the saturated units, and returns None where none saturates: then φ = u,
    ∂φ/∂x = slope (broadcast, not materialised) and ∂φ/∂p = 0 (None). The derivatives are elementwise (x's shape),
    ∂φ/∂p before summing over the units' other axes. For callers that write their own backward (the noisy LSTM's
    time loop).
    """
    u = torch.addcmul(shape.offset, x, shape.slope)
    delta = torch.clamp(u, shape.lo, shape.hi).sub_(u)
    # Where x saturates, sgn(x) = −sgn(Δ), so d = sgn(Δ)·sgn(1 − α); where Δ = 0 the noise term is 0 anyway.
    sign = torch.sign(delta)
    if callable(noise):
        drawn = noise(sign)
        if drawn is None:  # every unit in its linear range: Δ = 0
            return u, shape.slope.expand_as(u), None
        noise = drawn
    centred = torch.sigmoid(p * delta).sub_(0.5)
    weighted = (noise * sign).mul_(centred)
    out = u.addcmul_(delta, shape.alpha).addcmul_(weighted, centred)  # u + α Δ + d c ε (s − ½)², in u's storage
    half_k = weighted.mul_(0.25 - centred.square())  # s (1 − s) = ¼ − (s − ½)²
    # ∂φ/∂x: slope inside the linear range, (1 − α)·slope + k p Δ' where saturated (half_k is 0 inside).
    d_x = torch.addcmul(shape.slope, sign.abs_(), shape.minus_alpha_slope).addcmul_(half_k * p, shape.minus_2slope)
    return out, d_x, half_k.mul_(delta)


class _OutputNoisePhi(torch.autograd.Function):
    """φ of the output-noise modes (eq. 4.15) with a hand-written backward: one graph node instead of ~20.

    The gates of a noisy LSTM call φ at every step, where the per-op cost dominates. Arguments: x, the learned p,
    ``noise`` = sgn(1 − α)·c·ε (the noise term d σ ε is noise·sgn(Δ)·(s − ½)²) and a :class:`HardShape`.
    With s = sigmoid(p Δ), k = d c ε · 2(s − ½) s (1 − s) and Δ' = −slope·1[x saturated]::

        φ = u + α Δ + d c ε (s − ½)²,    ∂φ/∂x = α h' + (1 − α) u' + k p Δ',    ∂φ/∂p = k Δ
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: torch.Tensor, noise: torch.Tensor, shape: HardShape) -> torch.Tensor:
        out, d_x, half_d_p = output_noise_phi_parts(x, p, noise, shape)
        assert half_d_p is not None  # noise given as a tensor
        ctx.save_for_backward(d_x, half_d_p)
        ctx.p_shape = p.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        d_x, half_d_p = ctx.saved_tensors
        grad_p = (grad * half_d_p).sum_to_size(ctx.p_shape) * 2.0 if ctx.needs_input_grad[1] else None
        return grad * d_x, grad_p, None, None


def output_noise_phi(x: torch.Tensor, p: torch.Tensor, noise: torch.Tensor, shape: HardShape) -> torch.Tensor:
    """φ of the nan/nah modes in training, one autograd node (see :class:`_OutputNoisePhi` for the arguments)."""
    return _OutputNoisePhi.apply(x, p, noise, shape)


class _NoisyHard(PerUnitNoiseModule):
    """Shared implementation; subclasses fix h, u, the threshold and the default hyperparameters."""

    anneals_scale = True
    _scalar_buffers = ("c",)

    _h: Callable[[torch.Tensor], torch.Tensor]
    _replaces: tuple[type[nn.Module], ...]
    _u: Callable[[torch.Tensor], torch.Tensor]
    _threshold: float
    _slope: float
    _offset: float
    _h_range: tuple[float, float]
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

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Apply φ elementwise. x: any shape (units along ``unit_dim``); returns x's shape and dtype.

        ``noise`` optionally supplies ξ ~ N(0, 1) (same shape as x); by default it is drawn with
        ``torch.randn_like``. It is ignored in eval mode.
        """
        out_dtype = x.dtype
        x, xi = self.noisy_input(x, noise)
        p = self.unit_view(self.p.to(x.dtype), x) if self.mode in _LEARNED_P_MODES else None
        return self.phi(x, xi, p, self.c.to(x.dtype)).to(out_dtype)

    def phi(self, x: torch.Tensor, xi: torch.Tensor | None, p: torch.Tensor | None,
            c: torch.Tensor) -> torch.Tensor:
        """φ(x) with the per-unit tensors given: p (learned modes, broadcast against x; else None), c (0-d or per
        unit), ξ of x's shape (None: the eval form). Lets a caller apply several modules of this class at once on
        their concatenated units (the gates of a noisy LSTM), with this module's mode and α."""
        mode = self.mode
        sign_1ma = 1.0 if 1.0 - self.alpha >= 0 else -1.0
        if mode in ("nan", "nah") and xi is not None:
            assert p is not None
            eps = xi if mode == "nan" else xi.abs()
            return output_noise_phi(x, p, (sign_1ma * c) * eps, HardShape.of([self], 0, x))
        h = self._h(x)
        if mode in ("nan", "nah"):  # the eval form, eq. 4.17: ε replaced by its mean
            u = self._u(x)
            linear = self.alpha * h + (1.0 - self.alpha) * u
            if mode == "nan":  # E[ε] = 0: the noise term vanishes (no need to compute σ)
                return linear
            assert p is not None
            sigma = c * (torch.sigmoid(p * (h - u)) - 0.5).square()
            return linear + (-sgn(x) * sign_1ma) * sigma * HALF_NORMAL_MEAN
        if xi is None:
            return h
        if mode == "nani":
            return self._h(x + c * xi)
        if mode == "nanil":
            assert p is not None
            sigma = c * (torch.sigmoid(p * (h - self._u(x))) - 0.5).square()
            return self._h(x + sigma * xi)
        saturated = (x.abs() >= self._threshold).to(x.dtype)  # nanis
        return self._h(x + saturated * c * xi)

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
    _slope, _offset, _h_range = 0.25, 0.5, (0.0, 1.0)
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
    _slope, _offset, _h_range = 1.0, 0.0, (-1.0, 1.0)
    _default_c = {"nan": 0.5, "nah": 0.5, "nani": 0.05, "nanil": 0.5, "nanis": 0.25}
