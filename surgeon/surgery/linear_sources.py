"""Which modules are linear maps ``convert`` can restructure, and how to read each one's matrix.

Three module sources (plus ``F.linear`` call sites, read by the convert rule from the graph):

- ``nn.Linear``: weight (out, in), enabled by the target ``"linear"``;
- Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ...): the same map with the weight stored
  (in, out), ``y = x W + b``; also target ``"linear"``;
- 1×1 ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``: a linear map over channels at every position, target
  ``"conv1x1"`` (opt-in); the replacement is wrapped in :class:`~surgeon.layers.pointwise.PointwiseConv`.
  ``groups != 1`` (block-diagonal over channels) and non-zero padding (border outputs that are bias only) are
  refused with a reason; a stride is honoured by subsampling the input first.

Every source gives its weight as an (out, in) matrix, so fitting and ``to_dense`` comparisons see one
orientation. transformers is never imported here: a Conv1D can only exist once transformers is loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from surgeon.layers.pointwise import PointwiseConv

_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LinearView:
    """A module seen as the linear map ``y = W x + b`` it applies to (..., in) rows."""

    in_features: int
    out_features: int
    weight: torch.Tensor            # (out, in); a view of the module's parameter, not a copy
    bias: torch.Tensor | None       # (out,)


def hf_conv1d_type() -> type[nn.Module] | None:
    """transformers' ``Conv1D`` class when transformers is loaded, else None."""
    module = sys.modules.get("transformers.pytorch_utils")
    kind = getattr(module, "Conv1D", None) if module is not None else None
    return kind if isinstance(kind, type) else None


def module_types(targets: Iterable[str]) -> tuple[type[nn.Module], ...]:
    """Module classes that may be linear sites for ``targets``."""
    kinds: list[type[nn.Module]] = []
    if "linear" in targets:
        kinds.append(nn.Linear)
        conv1d = hf_conv1d_type()
        if conv1d is not None:
            kinds.append(conv1d)
    if "conv1x1" in targets:
        kinds.extend(_CONV_TYPES)
    return tuple(kinds)


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, _CONV_TYPES) and all(k == 1 for k in module.kernel_size)


def is_source(module: nn.Module, targets: Iterable[str]) -> bool:
    """Whether ``module`` is a linear site for ``targets`` (a 3×3 convolution is no candidate at all)."""
    if not isinstance(module, module_types(targets)):
        return False
    return not isinstance(module, _CONV_TYPES) or _is_pointwise(module)


def view(module: nn.Module) -> LinearView:
    """The (out, in) matrix and bias of a linear source module."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        return LinearView(module.in_features, module.out_features, module.weight, bias)
    if isinstance(module, _CONV_TYPES):
        return LinearView(module.in_channels, module.out_channels, module.weight.flatten(1), bias)
    weight = module.weight      # HF Conv1D: (in, out)
    return LinearView(int(weight.shape[0]), int(weight.shape[1]), weight.t(), bias)


def refusal(module: nn.Module) -> str | None:
    """Why a source module of a supported type cannot be replaced, or None."""
    own_forward = next(k.forward for k in (nn.Linear, *_CONV_TYPES, hf_conv1d_type()) if k and isinstance(module, k))
    if type(module).forward is not own_forward:
        return f"{type(module).__name__} overrides forward; converting would drop its behaviour"
    if not isinstance(module, _CONV_TYPES):
        return None
    if module.groups != 1:
        return (f"grouped 1×1 convolution (groups={module.groups}) is block-diagonal over channels, "
                "not one dense map to restructure")
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    if padding not in ("valid", "same") and any(p != 0 for p in padding):
        return f"1×1 convolution with padding={module.padding}: its border outputs are bias only, not a linear map"
    return None


def describe(module: nn.Module) -> str:
    """``Linear(64, 256, bias=True)``-style label for records."""
    shape = view(module)
    kind = type(module).__name__
    suffix = f", stride={tuple(module.stride)}" if isinstance(module, _CONV_TYPES) and max(module.stride) > 1 else ""
    return f"{kind}({shape.in_features}, {shape.out_features}, bias={shape.bias is not None}{suffix})"


def channel_dim(module: nn.Module) -> int:
    """Axis of the module's input that holds its features: -1, or the channel axis of a convolution."""
    return -1 - len(module.kernel_size) if isinstance(module, _CONV_TYPES) else -1


def wrap(module: nn.Module, layer: nn.Module) -> nn.Module:
    """The replacement to install for ``module``: ``layer`` itself, or a PointwiseConv around it for convs."""
    if isinstance(module, _CONV_TYPES):
        return PointwiseConv(layer, len(module.kernel_size), tuple(module.stride))
    return layer
