"""Hard-saturating base functions and their linearisations at 0 (thesis §4.3.2, eqs. 4.1–4.4).

    hard-sigmoid(x) = clip(0.25 x + 0.5, 0, 1),  u_s(x) = 0.25 x + 0.5,  saturation threshold x_t = 2
    hard-tanh(x)    = clip(x, -1, 1),            u_t(x) = x,             saturation threshold x_t = 1

The slope is 0.25 (the first-order Taylor expansion of the logistic sigmoid at 0), which is *not*
``torch.nn.Hardsigmoid`` (slope 1/6). All functions are elementwise and shape-preserving.
"""

from __future__ import annotations

import torch

__all__ = [
    "HARD_SIGMOID_THRESHOLD",
    "HARD_TANH_THRESHOLD",
    "hard_sigmoid",
    "hard_tanh",
    "lin_sigmoid",
    "lin_tanh",
    "sgn",
]

HARD_SIGMOID_THRESHOLD: float = 2.0
HARD_TANH_THRESHOLD: float = 1.0


def lin_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """u_s(x) = 0.25 x + 0.5, the linearisation of sigmoid at 0 (eq. 4.1). Any shape."""
    return 0.25 * x + 0.5


def lin_tanh(x: torch.Tensor) -> torch.Tensor:
    """u_t(x) = x, the linearisation of tanh at 0 (eq. 4.1). Any shape."""
    return x


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """hard-sigmoid(x) = max(min(0.25 x + 0.5, 1), 0) (eq. 4.4). Any shape; NaN propagates."""
    return torch.clamp(0.25 * x + 0.5, 0.0, 1.0)


def hard_tanh(x: torch.Tensor) -> torch.Tensor:
    """hard-tanh(x) = max(min(x, 1), -1) (eq. 4.3). Any shape; NaN propagates."""
    return torch.clamp(x, -1.0, 1.0)


def sgn(x: torch.Tensor) -> torch.Tensor:
    """The thesis' sign function (after eq. 4.14): +1 for x >= 0, -1 for x < 0 (so sgn(0) = +1).

    ``torch.sign`` returns 0 at 0, which would silently switch the noise off there. NaN maps to -1;
    callers multiply it with a NaN-carrying term, so NaN still propagates to their output.
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)
