"""``PointwiseConv``: a structured linear map applied over the channels of a 1×1 convolution's input.

A 1×1 ``nn.Conv{1,2,3}d`` with ``groups=1`` and no padding computes, at every (strided) spatial position, the
same linear map ``y[:, :, p] = W x[:, :, s·p] + b`` over channels (W of shape (C_out, C_in)). Replacing W by an
ACDC cascade or Fastfood transform (thesis §3.9–3.10) therefore only needs the channel axis moved last, the
structured layer applied to (..., C_in) rows, and the axis moved back. Subsampling by the stride first gives
exactly the positions the strided convolution reads. Everything is plain slicing and ``movedim`` (a Transpose
in ONNX), so export and ``torch.compile`` see ordinary ops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class PointwiseConv(nn.Module):
    """``layer`` (a (..., C_in) -> (..., C_out) map) applied over channels: (N, C_in, *S) -> (N, C_out, *S').

    ``spatial_dims``: 1, 2 or 3 (the convolution it replaces); unbatched inputs (C_in, *S) work too, as they do
    for the convolution. ``stride``: per spatial dim; S' = ceil(S / stride), as for a 1×1 convolution.
    """

    def __init__(self, layer: nn.Module, spatial_dims: int, stride: tuple[int, ...] | int = 1) -> None:
        super().__init__()
        if spatial_dims not in _CONVS:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        stride = (stride,) * spatial_dims if isinstance(stride, int) else tuple(int(s) for s in stride)
        if len(stride) != spatial_dims or any(s < 1 for s in stride):
            raise ValueError(f"stride must be {spatial_dims} positive integers, got {stride!r}")
        self.layer, self.spatial_dims, self.stride = layer, spatial_dims, stride
        self.in_features: int = layer.in_features
        self.out_features: int = layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Non-negative axes: the TorchScript ONNX exporter writes movedim's axes into Transpose's perm verbatim.
        channel, last = x.dim() - 1 - self.spatial_dims, x.dim() - 1
        if x.dim() not in (self.spatial_dims + 1, self.spatial_dims + 2) or x.shape[channel] != self.in_features:
            raise ValueError(f"PointwiseConv expected (N, {self.in_features}, *{self.spatial_dims} spatial dims) "
                             f"or unbatched input, got {tuple(x.shape)}")
        if any(s != 1 for s in self.stride):
            x = x[(..., *(slice(None, None, s) for s in self.stride))]
        y = self.layer(x.movedim(channel, last)).movedim(last, channel)
        # The moved-back view is channels-last in memory; downstream code may call .view(), so hand back a
        # standard layout unless the input itself was channels-last.
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return y.contiguous(memory_format=torch.channels_last)
        return y.contiguous()

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """The equivalent 1×1 convolution (the inner layer must have a dense form: ``layer.to_dense()``)."""
        dense = self.layer.to_dense()
        conv = _CONVS[self.spatial_dims](self.in_features, self.out_features, 1, stride=self.stride,
                                         bias=dense.bias is not None, device=dense.weight.device,
                                         dtype=dense.weight.dtype)
        conv.weight.copy_(dense.weight.reshape(conv.weight.shape))
        if dense.bias is not None:
            conv.bias.copy_(dense.bias)
        return conv

    def config(self) -> dict[str, Any]:
        """The inner layer's constructor arguments plus the wrapper's own (JSON-serialisable)."""
        getter = getattr(self.layer, "config", None)
        inner = dict(getter()) if callable(getter) else {}
        return {**inner, "layer": type(self.layer).__name__, "spatial_dims": self.spatial_dims,
                "stride": list(self.stride)}

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, stride={self.stride}"
