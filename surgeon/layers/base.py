"""What every structured drop-in for ``nn.Linear`` shares, written once.

The contract is ``nn.Linear``'s: inputs (..., in) -> outputs (..., out), floating point only, built from a dense
layer with :meth:`StructuredLinear.from_linear` (random structure of the same shape, device and dtype; fitting
is the surgery's job) and turned back into one with ``to_dense()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgeon.layers.checks import require_floating


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (or from torch's global generator when None)."""
    gen = torch.Generator()
    gen.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed))
    return gen


def check_features(in_features: int, out_features: int) -> None:
    for label, value in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


class StructuredLinear(nn.Module):
    """Base of ACDCLinear, FastfoodLinear and LowRankLinear (subclasses set ``in_features``/``out_features``)."""

    in_features: int
    out_features: int

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: Any) -> StructuredLinear:
        """A randomly initialised layer with ``linear``'s shape, bias, device and dtype."""
        kwargs.setdefault("bias", linear.bias is not None)
        return cls(linear.in_features, linear.out_features, device=linear.weight.device,
                   dtype=linear.weight.dtype, **kwargs)

    def checked_input(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """``x`` (..., in) after the dtype and shape checks, zero-padded to (..., width) when width > in."""
        require_floating(x, self)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expected inputs with last dim {self.in_features}, "
                             f"got {tuple(x.shape)}")
        if width is not None and width > self.in_features:
            x = nn.functional.pad(x, (0, width - self.in_features))
        return x

    def dense_linear(self, weight: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> nn.Linear:
        """An ``nn.Linear`` holding ``weight`` (out, in) and ``bias`` (out,), on ``like``'s device and dtype."""
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=like.device,
                           dtype=like.dtype)
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
        return linear

    def size_summary(self) -> str:
        """``params=P (dense D, ×R fewer)`` for ``extra_repr``."""
        params = sum(p.numel() for p in self.parameters())
        dense = self.in_features * self.out_features + self.out_features
        return f"params={params} (dense {dense}, ×{dense / max(params, 1):.1f} fewer)"
