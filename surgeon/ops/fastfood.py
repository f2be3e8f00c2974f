"""The Fastfood transform ``V x = S Ĥ G Π Ĥ B x`` (thesis §3.9, eq. 3.9), stacked over blocks.

``Ĥ = H/√d`` is the orthonormal Walsh–Hadamard matrix, so with Le et al.'s random draws (B ±1, G Gaussian,
S ~ chi(d)/‖G‖_F) every row of ``V`` has expected unit norm: ``V`` behaves like a dense Gaussian matrix with
entries N(0, 1/d), i.e. Le et al.'s ``1/(σ√d) S H G Π H B`` with σ = √d.

Gradients: called directly, :func:`fastfood_ref` is differentiated by autograd, which keeps every intermediate
(``Ĥ`` is symmetric, so its backward applies it again). The layers do not go through that: they call
``surgeon.ops.dispatch.fastfood``, whose registered backward (eq. 3.13) saves only ``x`` and recomputes
``Ĥ B x`` and ``Ĥ G Π Ĥ B x`` from it, on the Triton or the torch path.

Without autograd (inference, and the layers' forward) the chain runs in place, a block of rows at a time
(:func:`surgeon.ops.threads.row_blocks`) written straight into the output, with Π as an int32 ``index_select``
over the flattened blocks, on one torch thread up to ``CACHED_ELEMENTS`` numbers
(:func:`surgeon.ops.threads.serial_on_cached_rows`: under surgeon's ``OMP_WAIT_POLICY=PASSIVE`` every parallel
region wakes the second thread, and two threads were 3.5x slower at N = 4096, batch 1). In ``surgeon bench
--inference`` at N = 4096, batch 256 (three runs each) the blocked form read x5.1-6.6 over the dense layer, the
whole-batch form with an expanded-index ``gather`` x4.4-4.8.
"""

from __future__ import annotations

import torch

from surgeon.ops.hadamard import fwht
from surgeon.ops.index_cache import derived
from surgeon.ops.threads import row_blocks, serial_on_cached_rows
from surgeon.primitives import compute_dtype, records_grad


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
    rows = x.reshape(-1, d).to(compute)
    params = [t.to(compute) for t in (scale, gauss, binary)]
    if records_grad(rows, *params):
        out = _differentiable(rows, *params, perm)
    else:
        out = _inference(rows, *params, derived(perm, "flat int32", _flat_index))
    return out.reshape(*lead, blocks * d).to(x.dtype)


def _flat_index(perm: torch.Tensor) -> torch.Tensor:
    """Π over the flattened (n_blocks·d) rows, as the int32 index of ``index_select``."""
    blocks, d = perm.shape
    offsets = torch.arange(blocks, device=perm.device).unsqueeze(1) * d
    return (perm + offsets).reshape(-1).to(torch.int32)


def _differentiable(rows, scale, gauss, binary, perm) -> torch.Tensor:
    blocks, d = scale.shape
    h = fwht(rows.unsqueeze(1) * binary, normalized=True)                       # (M, blocks, d)
    h = torch.gather(h, -1, perm.unsqueeze(0).expand(h.shape[0], blocks, d))
    return fwht(h * gauss, normalized=True) * scale


def _inference(rows: torch.Tensor, scale, gauss, binary, flat: torch.Tensor) -> torch.Tensor:
    """rows (M, d) -> (M, n_blocks·d) without autograd: every product in place or into the output."""
    blocks, d = scale.shape
    width = blocks * d
    out = torch.empty(rows.shape[0], width, dtype=rows.dtype, device=rows.device)
    binary, gauss, scale = binary.reshape(-1), gauss.reshape(-1), scale.reshape(-1)
    for part in row_blocks(rows.shape[0], width, rows.device.type == "cpu"):
        m = part.stop - part.start
        h = fwht(rows[part].unsqueeze(1) * binary.view(blocks, d), normalized=True).reshape(m, width)
        h = torch.index_select(h, 1, flat).mul_(gauss)
        h = fwht(h.view(m, blocks, d), normalized=True).reshape(m, width)
        torch.mul(h, scale, out=out[part])
    return out
