"""Whether a call must be differentiable: the one test that picks between the in-place inference paths and the
autograd-recording ones."""

from __future__ import annotations

import torch


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd is on and any of ``tensors`` (None entries skipped) requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
