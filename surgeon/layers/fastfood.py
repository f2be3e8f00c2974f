"""``FastfoodLinear``: (Adaptive) Fastfood as a drop-in for ``nn.Linear`` (thesis §3.9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from surgeon.layers.base import StructuredLinear, check_features, seeded_generator
from surgeon.ops.dispatch import fastfood
from surgeon.ops.fastfood import fastfood_ref
from surgeon.ops.hadamard import next_power_of_two
from surgeon.primitives import records_grad


class FastfoodLinear(StructuredLinear):
    """``y = S Ĥ G Π Ĥ B x + bias`` mapping (..., in) -> (..., out) in O(out) storage, O(out log d) compute.

    The input is zero-padded to ``d``, the next power of two ≥ in; ``⌈out/d⌉`` independent transforms are
    stacked and the output truncated to ``out``. With ``adaptive=True`` (Deep Fried Convnets) S, G and B are
    learned parameters initialised from Le et al.'s random draws; with ``adaptive=False`` they are fixed buffers
    (the "random" rows of Tables 3.1–3.3). Π is always a fixed buffer; ``bias`` is an ordinary output bias.

    Shapes: ``scale``, ``gauss``, ``binary``, ``perm`` are (blocks, d).
    """

    def __init__(self, in_features: int, out_features: int, adaptive: bool = True, bias: bool = True,
                 seed: int | None = None, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_features(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.adaptive, self.seed = bool(adaptive), seed
        self.d = next_power_of_two(in_features)
        self.blocks = -(-out_features // self.d)
        gen = seeded_generator(seed)
        shape = (self.blocks, self.d)
        binary = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
        perm = torch.stack([torch.randperm(self.d, generator=gen) for _ in range(self.blocks)])
        gauss = torch.randn(shape, generator=gen, dtype=torch.float64)
        chi_rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
        chi = torch.from_numpy(np.sqrt(chi_rng.chisquare(self.d, size=shape)))
        scale = chi / gauss.norm(dim=-1, keepdim=True)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        for name, value in (("scale", scale), ("gauss", gauss), ("binary", binary)):
            value = value.to(**factory)
            if self.adaptive:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.register_buffer("perm", perm.to(device))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, **factory)) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.checked_input(x, self.d)
        y = fastfood(x, self.scale, self.gauss, self.binary, self.perm, backend=getattr(self, "backend", "auto"))
        if self.bias is not None:
            in_place = y.shape[-1] == self.out_features and y.dtype == torch.result_type(y, self.bias)
            if in_place and not records_grad(y):
                return y.add_(self.bias)   # y is the op's own fresh output: no second batch-sized tensor
            return y[..., : self.out_features] + self.bias
        # clone(): a view of the op's output would break in-place ops that follow (e.g. ReLU(inplace=True)).
        return y[..., : self.out_features].clone() if y.shape[-1] > self.out_features else y

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (Fastfood is always linear)."""
        probes = torch.eye(self.in_features, dtype=torch.float64, device=self.perm.device)
        probes = nn.functional.pad(probes, (0, self.d - self.in_features))
        weight = fastfood_ref(probes, self.scale.double(), self.gauss.double(), self.binary.double(),
                              self.perm)[:, : self.out_features].T
        return self.dense_linear(weight, self.bias, self.scale)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer's structure (JSON-serialisable)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "adaptive": self.adaptive,
                "bias": self.bias is not None, "seed": self.seed}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, d={self.d}, "
                f"blocks={self.blocks}, adaptive={self.adaptive}, bias={self.bias is not None}, "
                f"{self.size_summary()}")
