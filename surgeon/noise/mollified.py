"""Mollified activation ψ of mollifying networks (thesis §4.4.3, Algorithm 2, eqs. 4.24–4.26).

With f the activation shifted so that f(0) = 0 (sigmoid − 0.5; tanh and ReLU unchanged) and u its
first-order Taylor expansion at 0 (0.25x for sigmoid, x for tanh; x for ReLU, its right derivative),
for unit i of layer l::

    Δ_i  = u(x) − f(x)
    σ(x) = (sigmoid(a_i Δ_i) − 0.5)²           a_i learned per unit, init U[−2, 2]
    s_i  = p^l · c · σ(x) · |ξ_i|,  ξ_i ~ N(0, 1)
    ψ(x) = sgn(u(x)) · min(|u(x)|, |f(x) + sgn(u(x)) · s_i|)

``p^l`` is the noise level of layer l (the superscript is an index; the annealer sets it), so the
module stores one scalar ``p``. p^l·c large gives ψ → u (linear); p^l = 0 gives ψ = f.

Shift back: the output is ψ + f_orig(0), i.e. +0.5 for sigmoid (the "+u(0)" of the mollifying-
networks slides), so p = 0 reproduces ``torch.sigmoid`` and large noise gives u_s(x) = 0.25x + 0.5.

Implementation note: for these three f, sgn(f) = sgn(u) and |f| ≤ |u|, hence
|f + sgn(u) s| = |f| + s and ψ = f + sgn(u) · min(|Δ|, s). The module evaluates that equivalent
form on the *unshifted* activation, ``f_orig(x) + sgn(x) · min(|Δ|, s)``: it equals ``torch.sigmoid``
bit for bit at p = 0 and keeps the tiny values of sigmoid(x) for x ≪ 0, which ``(σ(x) − 0.5) + 0.5``
would round to 0.

Eval mode: ``eval_noise="mean"`` (default) replaces |ξ| by E|ξ| = sqrt(2/π), the same plug-in as
eq. 4.17, so a model whose annealing stopped at p > 0 keeps its trained behaviour;
``eval_noise="none"`` uses s = 0, i.e. the original f.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgeon.noise.base import HALF_NORMAL_MEAN, PerUnitNoiseModule
from surgeon.noise.hard import sgn

__all__ = ["DEFAULT_C", "EVAL_NOISE", "MOLLIFIED_KINDS", "MollifiedActivation"]

MOLLIFIED_KINDS: tuple[str, ...] = ("sigmoid", "tanh", "relu")
EVAL_NOISE = ("mean", "none")
#: The thesis gives no value for c; 100 makes ψ essentially linear at p = 1 for pre-activations of order 1–10.
DEFAULT_C = 100.0


class MollifiedActivation(PerUnitNoiseModule):
    """ψ of Algorithm 2 for ``kind`` in {"sigmoid", "tanh", "relu"}.

    Args:
        kind: the activation being mollified.
        p: initial layer noise level p^l in [0, 1] (buffer; 1 = start of annealing).
        c: noise scale hyperparameter (buffer). The thesis gives no default; 100 makes p = 1
            essentially linear for pre-activations of order 1–10.
        num_features: number of units (None: sized lazily from the first input).
        unit_dim: the unit dimension (-1 for (batch, [seq,] features), 1 for conv maps).
        shared: one scalar ``a`` for all units.
        layer: 1-based layer index l for the annealer (None: assigned by the annealer).
        eval_noise: "mean" or "none" (see module docstring).

    Shapes: input any shape with units along ``unit_dim``; output the same shape and dtype.
    """

    anneals_scale = True
    anneals_level = True
    _scalar_buffers = ("c", "p")

    def __init__(
        self,
        kind: str = "sigmoid",
        p: float = 1.0,
        c: float = DEFAULT_C,
        num_features: int | None = None,
        unit_dim: int = -1,
        shared: bool = False,
        layer: int | None = None,
        eval_noise: str = "mean",
    ) -> None:
        super().__init__(
            num_features=num_features, unit_dim=unit_dim, shared=shared, init_bound=2.0, layer=layer
        )
        kind = str(kind).lower()
        if kind not in MOLLIFIED_KINDS:
            raise ValueError(f"kind must be one of {MOLLIFIED_KINDS}, got {kind!r}")
        if eval_noise not in EVAL_NOISE:
            raise ValueError(f"eval_noise must be one of {EVAL_NOISE}, got {eval_noise!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        if float(c) < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.kind = kind
        self.eval_noise = eval_noise
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float64))
        self.register_buffer("c", torch.tensor(float(c), dtype=torch.float64))
        self._register_unit_param("a")

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (f_orig(x), Δ(x) = u(x) − f(x)) for the configured kind."""
        if self.kind == "sigmoid":
            # sigmoid(x) − 0.5 == 0.5·tanh(x/2), without the cancellation near 0.
            return torch.sigmoid(x), 0.25 * x - 0.5 * torch.tanh(0.5 * x)
        if self.kind == "tanh":
            return torch.tanh(x), x - torch.tanh(x)
        f = torch.relu(x)
        return f, x - f

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """ψ(x) + f_orig(0). x: any shape; returns x's shape and dtype.

        ``noise`` optionally supplies ξ ~ N(0, 1) of x's shape (training mode only).
        """
        out_dtype = x.dtype
        x, xi = self.noisy_input(x, noise)
        a = self.unit_view(self.a.to(x.dtype), x)
        return self.psi(x, xi, a, self.p.to(x.dtype) * self.c.to(x.dtype)).to(out_dtype)

    def psi(self, x: torch.Tensor, xi: torch.Tensor | None, a: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        """ψ(x) + f_orig(0) with the per-unit tensors given: a (broadcast against x), pc = p^l·c (0-d or per unit),
        ξ of x's shape (None: the eval form of ``eval_noise``). Lets a caller apply several modules of this class at
        once on their concatenated units (the gates of a mollified LSTM), with this module's kind."""
        if xi is None and self.eval_noise == "none":
            return self._parts(x)[0]
        f, delta = self._parts(x)
        sigma = (torch.sigmoid(a * delta) - 0.5).square()
        abs_xi = HALF_NORMAL_MEAN if xi is None else xi.abs()
        s = pc * sigma * abs_xi
        return f + sgn(x) * torch.minimum(delta.abs(), s)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(kind=self.kind, p=float(self.p), c=float(self.c), eval_noise=self.eval_noise)
        return cfg

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> MollifiedActivation:
        """Build the mollified replacement of ``nn.Sigmoid``, ``nn.Tanh`` or ``nn.ReLU``."""
        kinds = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}
        for typ, kind in kinds.items():
            if isinstance(module, typ):
                return cls(kind=kind, **kwargs)
        raise TypeError(f"cannot mollify a {type(module).__name__}; expected nn.Sigmoid, nn.Tanh or nn.ReLU")

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, p={float(self.p):g}, c={float(self.c):g}, "
            f"num_features={self.num_features}, unit_dim={self.unit_dim}"
        )
