"""The activation table of the ACDC cascades: name → torch function, in-place form, derivative, kernel code.

Every place that needs an activation (the torch cascade and its backward, the ONNX lowering, the Triton
kernels' ``ACT`` constexpr) looks it up here instead of switching on the name. The derivative is written in
terms of the activation's *output*, which is what the recomputing backward passes keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

LEAKY_SLOPE = 0.01

Unary = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activation:
    """One elementwise activation. ``slope_(out, scratch)`` writes act'(y) into ``scratch`` given out = act(y);
    None for the identity (no multiply needed). ``code`` is the Triton kernels' ``ACT`` value."""

    name: str
    code: int
    apply: Unary
    apply_: Unary
    slope_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def _leaky_slope_(out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    torch.gt(out, 0, out=scratch)
    return scratch.mul_(1 - LEAKY_SLOPE).add_(LEAKY_SLOPE)


def _tanh_slope_(out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(torch.ones_like(out), out, out, value=-1, out=scratch)


ACTIVATIONS: dict[str, Activation] = {spec.name: spec for spec in (
    Activation("none", 0, lambda y: y, lambda y: y, None),
    Activation("relu", 1, torch.relu, torch.relu_, lambda out, s: torch.gt(out, 0, out=s)),
    Activation("leaky_relu", 2, lambda y: F.leaky_relu(y, LEAKY_SLOPE), lambda y: F.leaky_relu_(y, LEAKY_SLOPE),
               _leaky_slope_),
    Activation("tanh", 3, torch.tanh, torch.tanh_, _tanh_slope_),
    Activation("sigmoid", 4, torch.sigmoid, torch.sigmoid_, lambda out, s: torch.mul(out, 1 - out, out=s)),
)}
_ALIASES = {"identity": "none", "linear": "none"}


def canonical_activation(activation: str | None) -> str:
    """Normalise an activation name (``None``, "identity", "linear" mean none) and reject unknown ones."""
    name = "none" if activation is None else str(activation).lower()
    name = _ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)} or None")
    return name


def activation_spec(activation: str | None) -> Activation:
    """The table entry for ``activation`` (any name :func:`canonical_activation` accepts)."""
    return ACTIVATIONS[canonical_activation(activation)]
