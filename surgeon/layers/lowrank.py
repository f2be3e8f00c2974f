"""``LowRankLinear``: ``x ↦ U (Vᵀ x) + b``, the truncated-SVD baseline every structured layer is compared with."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgeon.layers.base import StructuredLinear, check_features, seeded_generator


def rank_for_ratio(in_features: int, out_features: int, ratio: float, bias: bool = True) -> int:
    """The largest rank whose factors hold at most ``ratio`` of the dense layer's parameters (at least 1)."""
    dense = in_features * out_features + (out_features if bias else 0)
    budget = ratio * dense - (out_features if bias else 0)
    return max(1, min(min(in_features, out_features), int(budget // (in_features + out_features))))


class LowRankLinear(StructuredLinear):
    """Rank-``rank`` linear map (..., in) -> (..., out): ``y = (x vᵀ) uᵀ + bias``.

    Parameters: ``v`` (rank, in), ``u`` (out, rank), ``bias`` (out,) — ``rank·(in + out) + out`` numbers. Random
    initialisation makes ``uv`` distributed like ``nn.Linear``'s default weight scale (variance 1/(3·in));
    :meth:`from_dense` is the plain truncated SVD, and fitting (``convert(..., init="fit")``) the
    activation-whitened one.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 16, bias: bool = True,
                 seed: int | None = None, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_features(in_features, out_features)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        self.rank = min(rank, in_features, out_features)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        gen = seeded_generator(seed)
        v = torch.randn(self.rank, in_features, generator=gen, dtype=torch.float64) / math.sqrt(in_features)
        u = torch.randn(out_features, self.rank, generator=gen, dtype=torch.float64) / math.sqrt(3 * self.rank)
        self.v = nn.Parameter(v.to(**factory))
        self.u = nn.Parameter(u.to(**factory))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    @torch.no_grad()
    def load_factors(self, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> LowRankLinear:
        """Set ``u`` (out, r) and ``v`` (r, in) (and the bias) in place; returns self."""
        self.u.copy_(u.to(self.u))
        self.v.copy_(v.to(self.v))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.to(self.bias))
        return self

    @classmethod
    @torch.no_grad()
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None, rank: int, **kwargs: Any) -> LowRankLinear:
        """The best rank-``rank`` approximation of ``weight`` (out, in) in Frobenius norm (Eckart–Young)."""
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, rank=rank, bias=bias is not None, device=weight.device,
                    dtype=weight.dtype, **kwargs)
        left, sigma, right = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        root = sigma[: layer.rank].sqrt()
        return layer.load_factors(left[:, : layer.rank] * root, root.unsqueeze(1) * right[: layer.rank], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.checked_input(x)
        return nn.functional.linear(nn.functional.linear(x, self.v), self.u, self.bias)

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (weight ``u v``)."""
        return self.dense_linear(self.u @ self.v, self.bias, self.u)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer's structure (JSON-serialisable)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None, "seed": self.seed}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}, {self.size_summary()}")
