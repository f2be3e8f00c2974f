"""Optimiser parameter groups that know the structured layers (thesis §3.10.7.2).

The thesis trained ACDC cascades with no weight decay on the diagonals A and D (decay would pull them towards
zero, i.e. away from the identity the cascade starts at) and with learning-rate multipliers 24 for A and 12 for D.
The same holds for Fastfood's learned diagonals S, G, B. Biases take no weight decay either, as is customary.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear

# §3.10.7.2: "the learning rates for each matrix A and D were multiplied by 24 and 12"
THESIS_MULTIPLIERS = {"acdc.a": 24.0, "acdc.d": 12.0}
_DIAGONALS = {ACDCLinear: ("a", "d", "b"), FastfoodLinear: ("scale", "gauss", "binary")}


def _role(module: nn.Module, leaf: str) -> str | None:
    for kind, names in _DIAGONALS.items():
        if isinstance(module, kind) and leaf in names:
            return f"{'acdc' if kind is ACDCLinear else 'fastfood'}.{leaf}"
    return None


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, *,
                 multipliers: dict[str, float] | bool = False) -> list[dict[str, Any]]:
    """Groups for ``torch.optim`` over ``model``'s trainable parameters.

    ``"dense"``: ordinary weights, ``lr`` and ``weight_decay``. ``"diagonals"``: ACDC a/d/b and Fastfood
    S/G/B, no weight decay. ``"bias"``: other 1-d parameters, no weight decay. ``multipliers=True`` applies the
    thesis's learning-rate multipliers (ACDC a ×24, d ×12), each in its own group; a mapping such as
    ``{"acdc.a": 4.0}`` sets them by role ("acdc.a", "acdc.d", "acdc.b", "fastfood.scale", ...). Every group
    carries a ``"name"`` key. Shared parameters appear once.
    """
    factors = THESIS_MULTIPLIERS if multipliers is True else dict(multipliers or {})
    groups: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            role = _role(module, leaf)
            if role is not None:
                name = role if role in factors else "diagonals"
                decay, rate = 0.0, lr * factors.get(role, 1.0)
            elif param.dim() <= 1:
                name, decay, rate = "bias", 0.0, lr
            else:
                name, decay, rate = "dense", weight_decay, lr
            group = groups.setdefault(name, {"name": name, "params": [], "lr": rate, "weight_decay": decay})
            group["params"].append(param)
    return list(groups.values())
