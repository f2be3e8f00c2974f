"""The Fastfood transform ``V x = S Ĥ G Π Ĥ B x`` (thesis §3.9, eq. 3.9), stacked over blocks.

``Ĥ = H/√d`` is the orthonormal Walsh–Hadamard matrix, so with Le et al.'s random draws (B ±1, G Gaussian,
S ~ chi(d)/‖G‖_F) every row of ``V`` has expected unit norm: ``V`` behaves like a dense Gaussian matrix with
entries N(0, 1/d), i.e. Le et al.'s ``1/(σ√d) S H G Π H B`` with σ = √d.

Gradients: called directly, :func:`fastfood_ref` is differentiated by autograd, which keeps every intermediate
(``Ĥ`` is symmetric, so its backward applies it again). The layers do not go through that: they call
``surgeon.ops.dispatch.fastfood``, whose registered backward (eq. 3.13) saves only ``x`` and recomputes
``Ĥ B x`` and ``Ĥ G Π Ĥ B x`` from it, on the Triton or the torch path.
"""

from __future__ import annotations

import torch

from surgeon.ops.hadamard import fwht
from surgeon.ops.threads import serial_on_cached_rows
from surgeon.primitives import compute_dtype


@serial_on_cached_rows
def fastfood_ref(x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor, binary: torch.Tensor,
                 perm: torch.Tensor) -> torch.Tensor:
    """Apply ``n_blocks`` stacked Fastfood transforms to x (..., d) -> (..., n_blocks * d).

    ``scale``, ``gauss``, ``binary``: (n_blocks, d) diagonals S, G, B; ``perm``: (n_blocks, d) int64 Π, so that
    ``(Π v)[i] = v[perm[i]]``. fp16/bf16 are computed in fp32 and cast back.
    """
    blocks, d = scale.shape
    compute = compute_dtype(x.dtype)
    lead = x.shape[:-1]
    rows = x.reshape(-1, 1, d).to(compute)
    # Without autograd the products overwrite the fresh gather/transform outputs: two fewer passes over memory.
    in_place = not torch.is_grad_enabled()
    h = fwht(rows * binary.to(compute), normalized=True)
    h = torch.gather(h, -1, perm.unsqueeze(0).expand(h.shape[0], blocks, d))
    h = fwht(h.mul_(gauss.to(compute)) if in_place else h * gauss.to(compute), normalized=True)
    h = h.mul_(scale.to(compute)) if in_place else h * scale.to(compute)
    return h.reshape(*lead, blocks * d).to(x.dtype)
