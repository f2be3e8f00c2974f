"""``ACDCLinear``: a K-factor ACDC cascade as a drop-in for ``nn.Linear`` (thesis §3.10, eq. 3.24)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgeon.layers.base import StructuredLinear, check_features, seeded_generator
from surgeon.ops.acdc import acdc_cascade_ref, canonical_activation
from surgeon.ops.dispatch import acdc_cascade

MAX_DEPTH = 1024   # the one limit on ACDC depth (the configs and the CLI read it here)


class ACDCLinear(StructuredLinear):
    """``Φ(x) = Π_k A_k C D_k C⁻¹``-style cascade of ``depth`` ACDC factors mapping (..., in) -> (..., out).

    Each factor is ``y = IDCT(DCT(x ⊙ a_k) ⊙ d_k + b_k)``; between factors the ``activation`` and a fixed
    random permutation (buffer ``perms``, reproducible from ``seed``) keep adjacent factors incoherent.
    The working size is ``N = max(in, out)``: the input is zero-padded to N and the output truncated.
    Diagonals start at ``N(1, init_std²)`` (identity plus noise, §3.10.7.1), biases at 0.

    Parameters: ``a``, ``d`` (K, N) and ``b`` (K, N) when ``bias``; 2KN or 3KN numbers in all.
    Training memory: by default the backward saves only the layer input and recomputes the cascade;
    ``recompute=False`` saves (2K-1) more rows of N per input row and runs a third fewer transforms.
    """

    backend = "auto"   # "triton" / "torch" force one (surgeon.ops.dispatch); a class default keeps the lookup cheap

    def __init__(self, in_features: int, out_features: int, depth: int = 12, bias: bool = True,
                 activation: str | None = "relu", permute: bool = True, init_std: float = 0.1,
                 seed: int | None = None, device: Any = None, dtype: torch.dtype | None = None,
                 recompute: bool = True) -> None:
        super().__init__()
        check_features(in_features, out_features)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be an integer between 1 and {MAX_DEPTH}, got {depth!r}")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"init_std must be a finite non-negative number, got {init_std!r}")
        self.in_features, self.out_features, self.depth = in_features, out_features, depth
        self.size = max(in_features, out_features)
        self.activation = canonical_activation(activation)
        self.permute, self.init_std, self.seed = bool(permute), float(init_std), seed
        # False: keep each factor's input and spectrum for backward instead of recomputing them (surgeon.ops.dispatch).
        # A run-time choice like ``backend``: it changes neither the map nor the parameters, so config() omits it.
        self.recompute = bool(recompute)
        factory = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(depth, self.size, **factory))
        self.d = nn.Parameter(torch.empty(depth, self.size, **factory))
        self.register_parameter("b", nn.Parameter(torch.empty(depth, self.size, **factory)) if bias else None)
        gen = seeded_generator(seed)
        if self.permute and depth > 1:
            perms = torch.stack([torch.randperm(self.size, generator=gen) for _ in range(depth - 1)])
            self.register_buffer("perms", perms.to(device))
        else:
            self.register_buffer("perms", None)
        self._init_gen_state = gen.get_state()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Diagonals ~ N(1, init_std²) from the layer's seed, biases 0."""
        gen = torch.Generator()
        gen.set_state(self._init_gen_state)
        with torch.no_grad():
            for p in (self.a, self.d):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * self.init_std
                p.copy_((1.0 + noise).to(p.dtype))
            if self.b is not None:
                self.b.zero_()

    @property
    def bias(self) -> torch.Tensor | None:  # nn.Linear-like introspection
        return self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.checked_input(x, self.size)
        # Triton on CUDA, torch elsewhere; ``layer.backend`` / SURGEON_BACKEND force either (surgeon.ops.dispatch).
        y = acdc_cascade(x, self.a, self.d, self.b, self.perms, self.activation,
                         backend=self.backend, recompute=getattr(self, "recompute", True))
        # clone(): a view of the op's output would break in-place ops that follow (e.g. ReLU(inplace=True)).
        return y[..., : self.out_features].clone() if self.out_features < self.size else y

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (only when the cascade is linear, i.e. ``activation=None``)."""
        if self.activation != "none":
            raise ValueError(f"to_dense() needs a linear cascade (activation=None); this one uses {self.activation!r}")
        ref = self.a
        probes = torch.cat([torch.zeros(1, self.in_features), torch.eye(self.in_features)])
        probes = probes.to(ref.device, torch.float64)
        outputs = acdc_cascade_ref(nn.functional.pad(probes, (0, self.size - self.in_features)),
                                   self.a.double(), self.d.double(), None if self.b is None else self.b.double(),
                                   self.perms, "none")[:, : self.out_features]
        offset = outputs[0]
        return self.dense_linear((outputs[1:] - offset).T, offset if self.b is not None else None, ref)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer's structure (JSON-serialisable)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "depth": self.depth,
                "bias": self.b is not None, "activation": None if self.activation == "none" else self.activation,
                "permute": self.permute, "init_std": self.init_std, "seed": self.seed}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
                f"N={self.size}, activation={self.activation}, permute={self.permute}, bias={self.b is not None}, "
                f"{self.size_summary()}")
