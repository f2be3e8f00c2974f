"""Stochastic skipping of a block in a mollifying network (thesis §4.4.3.1, eqs. 4.27–4.30).

    h̃^l = ψ(block(h^{l−1}))                          (the block ends in its mollified activation)
    h^l  = π^l ⊙ h^{l−1} + (1 − π^l) ⊙ h̃^l,  π^l ~ Bernoulli(p^l), drawn per unit and per example

p^l = 1: the layer is the identity; p^l = 0: the full layer. When the block changes the size of the
unit dimension, h^{l−1} is zero-padded (more outputs) or truncated (fewer outputs) along
``unit_dim``; pass ``projection=`` (e.g. ``nn.Linear(in, out, bias=False)``) for the linear-projection
alternative the thesis also allows.

Eval mode (the thesis does not specify it): ``eval_mode="expectation"`` (default) returns
E_π[h^l] = p·h^{l−1} + (1 − p)·h̃^l, the dropout/stochastic-depth convention; it *is* the full
network h̃^l once p has been annealed to 0 and stays consistent with training if annealing stopped
at p > 0 (expected depth δ reached, eq. 4.31). ``eval_mode="full"`` always returns h̃^l.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.layers.checks import require_floating
from surgeon.noise.base import NoiseModule

__all__ = ["EVAL_MODES", "StochasticSkip"]

EVAL_MODES = ("expectation", "full")


class StochasticSkip(NoiseModule):
    """Per-unit Bernoulli(p) choice between a block's input and its output.

    Args:
        block: module mapping h^{l−1} to h̃^l (usually ``Linear → MollifiedActivation``).
        p: initial skip probability p^l in [0, 1] (buffer, set by the annealer).
        unit_dim: dimension along which input and output sizes may differ (-1 or 1 for conv maps).
        projection: optional module mapping h^{l−1} to the output size (instead of pad/truncate).
        eval_mode: "expectation" or "full" (see module docstring).
        layer: 1-based layer index l for the annealer; mollified activations inside ``block``
            inherit it.

    Shapes: input (..., F_in, ...) → output (..., F_out, ...) with F along ``unit_dim``.
    """

    anneals_level = True
    _scalar_buffers = ("p",)

    def __init__(
        self,
        block: nn.Module,
        p: float = 1.0,
        unit_dim: int = -1,
        projection: nn.Module | None = None,
        eval_mode: str = "expectation",
        layer: int | None = None,
    ) -> None:
        super().__init__(layer=layer)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        self.block = block
        self.projection = projection
        self.unit_dim = int(unit_dim)
        self.eval_mode = eval_mode
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float64))

    def _match(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bring the skipped input x to y's shape (projection, or zero-pad / truncate on unit_dim)."""
        if self.projection is not None:
            x = self.projection(x)
        if x.shape == y.shape:
            return x
        if x.dim() != y.dim():
            raise ValueError(f"cannot skip from shape {tuple(x.shape)} to {tuple(y.shape)}")
        axis = self.unit_dim if self.unit_dim >= 0 else x.dim() + self.unit_dim
        others_x = x.shape[:axis] + x.shape[axis + 1 :]
        others_y = y.shape[:axis] + y.shape[axis + 1 :]
        if others_x != others_y:
            raise ValueError(
                f"input {tuple(x.shape)} and block output {tuple(y.shape)} "
                f"differ outside unit_dim={self.unit_dim}"
            )
        n_in, n_out = x.shape[axis], y.shape[axis]
        if n_in > n_out:
            return x.narrow(axis, 0, n_out)
        # F.pad lists (left, right) pairs starting from the last dim.
        pad = [0, 0] * (x.dim() - axis - 1) + [0, n_out - n_in]
        return F.pad(x, pad)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """h^l of eq. 4.28; extra arguments are passed to the block."""
        require_floating(x, self)
        y = self.block(x, *args, **kwargs)
        skip = self._match(x, y).to(y.dtype)
        p = self.p.to(y.dtype)
        if self.training:
            # where() rather than π·a + (1−π)·b: an inf in the unused branch must not become NaN.
            # Draw in fp32: fp16 uniforms are too coarse to honour a small p.
            pi = torch.rand_like(y, dtype=torch.float32) < self.p
            return torch.where(pi, skip, y)
        if self.eval_mode == "full":
            return y
        return p * skip + (1.0 - p) * y

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(p=float(self.p), unit_dim=self.unit_dim, eval_mode=self.eval_mode)
        return cfg

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> StochasticSkip:
        """Wrap an existing block (its parameters are kept, not copied)."""
        return cls(module, **kwargs)

    def extra_repr(self) -> str:
        return f"p={float(self.p):g}, unit_dim={self.unit_dim}, eval_mode={self.eval_mode!r}"
