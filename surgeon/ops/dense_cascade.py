"""Small-N ACDC forward as dense factor matrices: one GEMM per factor instead of two transforms and five passes.

One factor maps a row ``z`` to ``Cᵀ-side`` form ``y = ((z ⊙ a) Cᵀ ⊙ d + b) C = z W + c`` with (eq. 3.24)::

    W = diag(a) Cᵀ diag(d) C   (N × N),      c = b C   (N,)

and the permutation before the next factor folds into that factor's rows: ``z[:, perm] W = z W'`` with
``W'[perm] = W``. A cascade is then ``act`` between ``addmm`` calls; a linear one (no activation) collapses to a
single ``(W, c)``. Building the matrices costs K·N³ multiply-adds, so the path is taken when that is repaid
within the call, or for every N ≤ 128 in inference (no autograd), where the matrices of unchanged parameters are
cached: every call after the first is K GEMMs, or one for a linear cascade (:func:`dense_cascade_pays`).

The cache holds, per diagonal tensor ``a`` (weakly: it dies with the tensor), copies of the parameters it was
built from and is used only when ``torch.equal`` says they are unchanged, so in-place edits of any kind
(optimiser steps, ``.data.copy_``, ``load_state_dict``) are seen. It costs K·N² numbers per layer (0.8 MB at
N = 128, K = 12). No autograd: the forward of the cascade op.
"""

from __future__ import annotations

import weakref

import torch

from surgeon.ops.dct import MATMUL_ALWAYS_N, MATMUL_MAX_N, dct_engine_allows_matmul, transform_matrix
from surgeon.primitives import activation_spec

__all__ = ["dense_cascade_forward", "dense_cascade_pays", "dense_matrices"]

BUILD_ALLOWANCE = 2**19   # multiply-adds a call may spend on the matrices beyond what it saves in GEMM work

# id(a) -> (weak reference to a, signature, copies of a, d, b, perms, W, c); an entry leaves with its tensor.
_CACHE: dict[int, tuple] = {}


def dense_cascade_pays(n: int, rows: int, reused: bool = False) -> bool:
    """Whether the dense factor matrices beat the transform path for a call on ``rows`` rows of size ``n``.

    One GEMM per factor (rows·N²) replaces two (2·rows·N²) and five elementwise passes, so building them
    (K·N³) within the call is repaid once rows reach about N; below MATMUL_ALWAYS_N the saved passes alone repay
    it. ``reused`` (inference: the same parameters serve many calls) repays it at every N ≤ MATMUL_MAX_N.
    """
    if n > MATMUL_MAX_N:
        return False
    return reused or n <= MATMUL_ALWAYS_N or n * n * n <= rows * n * n + BUILD_ALLOWANCE


def _signature(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (t.shape, t.dtype, t.device) for t in tensors)


def _build(a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None, perms: torch.Tensor | None,
           linear: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W`` (K, N, N) with each permutation folded into the next factor's rows, ``c`` (K, N) or None; a linear
    cascade is composed into one factor (1, N, N), (1, N)."""
    n = a.shape[1]
    ct = transform_matrix(n, 2, a.dtype, a.device)
    c_mat = transform_matrix(n, 3, a.dtype, a.device)
    w = torch.matmul(a.unsqueeze(-1) * ct, d.unsqueeze(-1) * c_mat)
    bias = None if b is None else torch.matmul(b, c_mat)
    if perms is not None:
        folded = torch.empty_like(w)
        folded[0] = w[0]
        folded[1:].scatter_(1, perms.unsqueeze(-1).expand(-1, -1, n), w[1:])
        w = folded
    if not linear or a.shape[0] == 1:
        return w, bias
    total, offset = w[0], None if bias is None else bias[0]
    for k in range(1, a.shape[0]):
        offset = None if offset is None else offset @ w[k]
        if bias is not None:
            offset = offset + bias[k]
        total = total @ w[k]
    return total.unsqueeze(0), None if offset is None else offset.unsqueeze(0)


def _unchanged(a, d, b, perms, key) -> tuple | None:
    """The cache entry of ``a`` if it was made from exactly these parameters: (a, d, b, perms, W, c)."""
    entry = _CACHE.get(id(a))
    if entry is None or entry[0]() is not a or entry[1] != key:
        return None
    kept = entry[2]
    if all(k is None if t is None else torch.equal(k, t) for k, t in zip(kept[:4], (a, d, b, perms))):
        return kept
    return None


def _remember(a, d, b, perms, key, w: list[torch.Tensor], bias: list[torch.Tensor] | None) -> None:
    ident = id(a)
    ref = weakref.ref(a, lambda _: _CACHE.pop(ident, None))
    _CACHE[ident] = (ref, key, tuple(None if t is None else t.clone() for t in (a, d, b, perms)) + (w, bias))


def dense_matrices(a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None, perms: torch.Tensor | None,
                   activation: str, rows: int,
                   reused: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
    """The factor matrices for a call on ``rows`` rows when :func:`dense_cascade_pays`, else None (take the
    transform path): cached ones when the parameters are unchanged, else freshly built and cached.

    The path depends on (N, rows, reused) only, never on what was called before, so repeated calls round alike.
    """
    n = a.shape[1]
    if not dense_cascade_pays(n, rows, reused) or not dct_engine_allows_matmul():
        return None
    linear = activation == "none"
    key = (_signature(a, d, b, perms), linear)
    with torch.no_grad():
        kept = _unchanged(a, d, b, perms, key)
        if kept is not None:
            return kept[4], kept[5]
        w, bias = _build(a, d, b, perms, linear)
        # Kept as lists of factors: taking w[k] (a view) per call cost as much as a small GEMM.
        w, bias = list(w.unbind(0)), None if bias is None else list(bias.unbind(0))
        _remember(a, d, b, perms, key, w, bias)
    return w, bias


def dense_cascade_forward(x: torch.Tensor, matrices: tuple[list[torch.Tensor], list[torch.Tensor] | None],
                          activation: str) -> torch.Tensor:
    """The cascade through :func:`dense_matrices`' ``(W_k, c_k)``: x (M, N) -> (M, N); ``act`` between factors."""
    activate_ = activation_spec(activation).apply_
    w, bias = matrices
    with torch.no_grad():
        h = x
        for k, factor in enumerate(w):
            if k > 0:
                activate_(h)
            h = torch.mm(h, factor) if bias is None else torch.addmm(bias[k], h, factor)
    return h
