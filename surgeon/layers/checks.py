"""Input checks shared by every surgeon layer's ``forward``, so each rule is written once.

``nn.Linear`` refuses integer inputs; the structured layers and noisy units would otherwise compute in the
integer dtype and truncate (an ACDC output of 3.18 becomes 3, a noisy hard sigmoid of 0 gives 0 instead of 0.5).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence


def require_floating(x: object, layer: torch.nn.Module) -> None:
    """Raise ``TypeError`` naming the dtype unless ``x`` (a tensor or PackedSequence) is floating point.

    Anything else (an fx ``Proxy`` while tracing) passes: its dtype is checked when real data arrives.
    """
    data = x.data if isinstance(x, PackedSequence) else x
    if isinstance(data, torch.Tensor) and not data.is_floating_point():
        raise TypeError(f"{type(layer).__name__} expects a floating-point input, got {data.dtype}; "
                        "convert it first (e.g. x.float())")
