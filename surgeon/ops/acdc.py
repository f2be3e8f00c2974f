"""ACDC factors and cascades (thesis §3.10) with a recomputing backward pass.

One factor on a row ``x`` of size N (eqs. 3.24–3.26, bias in the DCT domain as in §3.10.7.2)::

    h2 = C (x ⊙ a)          C: orthonormal DCT-II, eq. 3.27
    y  = Cᵀ (h2 ⊙ d + b)

A cascade applies K factors; between two factors (never after the last) an elementwise activation and a
fixed permutation ``z_{k+1} = act(y_k)[..., perm_k]``.

Gradients (eqs. 3.28–3.32) with ``g = ∂L/∂y`` — no division by a diagonal anywhere::

    g3 = C g;   ∂L/∂b = Σ g3;   ∂L/∂d = Σ h2 ⊙ g3;   g1 = Cᵀ (d ⊙ g3);   ∂L/∂a = Σ x ⊙ g1;   ∂L/∂x = a ⊙ g1

Memory (§3.3.3 warns that stored activations eat the savings): the autograd Functions here save only the
cascade input for backward (B·N floats whatever K) and recompute every intermediate in the backward pass.

These functions are the pure-torch reference (``*_ref``) for the Triton kernels in ``surgeon.kernels``; they run
on any device, the DCTs going through scipy on CPU and ``torch.fft`` elsewhere.

Passes over memory, per factor and row: forward 2 transforms and 4 elementwise passes (``⊙ a``, ``⊙ d + b`` in one
``addcmul``, the activation, the permutation); backward 2 transforms and 9 (three column sums and the two
products they sum, the ``⊙ d`` and ``⊙ a`` products, act', the inverse permutation). Rows rarely stay in the cache
between two passes, so on CPU a block of rows of ``surgeon.ops.threads.ROW_BLOCK_ELEMENTS`` numbers goes through
every factor before the next block (:func:`surgeon.ops.threads.row_blocks`): each pass then reads and writes the
cache, not memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch

from surgeon.ops.dct import InPlaceDCT, eager_cpu
from surgeon.ops.dense_cascade import dense_cascade_forward, dense_matrices
from surgeon.ops.index_cache import derived
from surgeon.ops.threads import row_blocks, serial_on_cached_rows, serial_torch
from surgeon.ops.workspace import rows_buffer
from surgeon.primitives import ACTIVATIONS, activation_spec, canonical_activation, compute_dtype

__all__ = ["ACTIVATIONS", "RecomputingCascade", "acdc_cascade_backward", "acdc_cascade_backward_saved",
           "acdc_cascade_forward", "acdc_cascade_forward_saving", "acdc_cascade_ref", "acdc_factor_ref",
           "canonical_activation", "cascade_gradients"]


def _permute_columns(y: torch.Tensor, perm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y[:, perm]`` for (M, N) rows. With an int32 ``perm`` (see :class:`_Factors`) ``index_select`` ran 2× faster
    than ``gather`` on an expanded index, itself several times faster than indexing."""
    if perm.dtype == torch.int32:
        return torch.index_select(y, 1, perm, out=out)
    return torch.gather(y, 1, perm.expand(y.shape[0], -1), out=out)


class _Factors(NamedTuple):
    """A cascade's parameters split per factor once per call: every row block indexes them per factor, and
    indexing a (K, N) tensor costs microseconds a time. Permutations (and their inverses, for the backward) as
    int32, the index type of the fast ``index_select``."""

    a: tuple[torch.Tensor, ...]
    d: tuple[torch.Tensor, ...]
    b: tuple[torch.Tensor, ...] | None
    perms: tuple[torch.Tensor, ...] | None
    inverse: tuple[torch.Tensor, ...] | None

    @property
    def depth(self) -> int:
        return len(self.a)


def _factors(a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None, perms: torch.Tensor | None,
             inverse: bool = False) -> _Factors:
    index, undo = (None, None) if perms is None else _int32_permutations(perms, inverse)
    return _Factors(a.unbind(0), d.unbind(0), None if b is None else b.unbind(0), index, undo)


# id(a) -> (weak reference to a, where a, d, b live, the split factors without inverses)
_SPLIT_CACHE: dict[int, tuple] = {}


def _storage_signature(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (id(t), t.data_ptr(), t.shape, t.stride(), t.dtype) for t in tensors)


def _forward_factors(a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                     perms: torch.Tensor | None) -> _Factors:
    """:func:`_factors` for a forward, kept per diagonal tensor ``a`` while ``a``, ``d``, ``b`` are the same
    tensors on the same memory: splitting three (K, N) tensors into 3K rows cost ~40 µs a call, a tenth of a
    batch-1 forward at N = 4096. The rows are views of detached aliases, so in-place updates of the parameters
    show through them and they do not keep the parameters themselves alive (the entry dies with ``a``); the
    permutations are re-checked by :func:`_int32_permutations` every call."""
    if any(t is not None and t.is_inference() for t in (a, d, b)):
        return _factors(a, d, b, perms)
    signature = _storage_signature(a, d, b)
    entry = _SPLIT_CACHE.get(id(a))
    if entry is None or entry[0]() is not a or entry[1] != signature:
        ident = id(a)
        ref = weakref.ref(a, lambda _: _SPLIT_CACHE.pop(ident, None))
        split = tuple(None if t is None else t.detach().unbind(0) for t in (a, d, b))
        entry = _SPLIT_CACHE[ident] = (ref, signature, split)
    index = None if perms is None else _int32_permutations(perms, False)[0]
    return _Factors(*entry[2], index, None)


def _int32_permutations(perms: torch.Tensor, inverse: bool):
    """``perms`` (K-1, N) as int32 rows and, when ``inverse``, their inverses (else None); derived once per
    permutation tensor (:mod:`surgeon.ops.index_cache`): a layer's buffer serves every call."""
    if not inverse:
        return derived(perms, "int32 rows", _int32_rows), None
    return derived(perms, "int32 rows", _int32_rows), derived(perms, "int32 inverse rows", _int32_inverse_rows)


def _int32_rows(perms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return perms.to(torch.int32, copy=True).unbind(0)   # a copy: views would keep perms alive in the cache


def _int32_inverse_rows(perms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    positions = torch.arange(perms.shape[1], dtype=torch.int32, device=perms.device).expand(perms.shape)
    return torch.empty(perms.shape, dtype=torch.int32, device=perms.device).scatter_(1, perms, positions).unbind(0)


def acdc_factor_ref(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """One ACDC factor ``Cᵀ(C(x ⊙ a) ⊙ d + b)``: x (..., N), a/d/b (N,) -> (..., N). Differentiable."""
    return acdc_cascade_ref(x, a.unsqueeze(0), d.unsqueeze(0), None if b is None else b.unsqueeze(0), None, "none")


def acdc_cascade_forward(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                         perms: torch.Tensor | None, activation: str, reused: bool = False) -> torch.Tensor:
    """Forward of a K-factor cascade: x (M, N); a, d, b (K, N); perms (K-1, N) int64 or None -> (M, N).

    Works in place in the output and one scratch block whatever K (memory-bound: allocations and passes cost
    more than FLOPs), a block of rows through every factor at a time on CPU (:func:`row_blocks`); at small N one
    GEMM per factor against dense factor matrices instead (:mod:`surgeon.ops.dense_cascade`).
    ``reused``: the caller expects the parameters to serve many calls (inference), which repays the matrices.
    """
    cpu = eager_cpu(x)
    if cpu:
        matrices = dense_matrices(a, d, b, perms, activation, x.shape[0], reused)
        if matrices is not None:
            return _dense_forward(x, matrices, activation)
    activate_ = activation_spec(activation).apply_
    out = _rows_like(x)
    blocks = row_blocks(x.shape[0], x.shape[-1], cpu)
    with serial_torch(x), torch.no_grad():
        factors = _forward_factors(a, d, b, perms)
        first = out if len(blocks) == 1 else out[blocks[0]]   # slicing a tensor costs microseconds: only if needed
        transform_ = InPlaceDCT(first, cpu)
        scratch = torch.empty_like(first) if factors.perms is not None else None
        if len(blocks) == 1:
            torch.mul(x, factors.a[0], out=out)
            return _cascade_rows_(out, factors, activate_, transform_.bound(out), scratch)
        for rows in blocks:
            h = torch.mul(x[rows], factors.a[0], out=out[rows])
            _cascade_rows_(h, factors, activate_, transform_.bound(h), None if scratch is None else scratch[: len(h)])
    return out


_dense_forward = serial_on_cached_rows(dense_cascade_forward)


def _cascade_rows_(h: torch.Tensor, factors: _Factors, activate_, transform: Callable[[int], object],
                   scratch: torch.Tensor | None) -> torch.Tensor:
    """In place: ``h = x ⊙ a_0`` (rows, N) through every factor, ``h ← Cᵀ(C h ⊙ d + b)`` then the activation,
    permutation and next ``⊙ a`` between factors; ``transform(kind)`` transforms ``h`` itself
    (:meth:`InPlaceDCT.bound`), ``scratch`` (rows, N) when permuting. The hot loop of inference: six calls per
    factor, nothing resolved or allocated inside it."""
    depth, d, b, a, perms = factors.depth, factors.d, factors.b, factors.a, factors.perms
    for k in range(depth):
        transform(2)
        if b is None:
            h.mul_(d[k])
        else:
            torch.addcmul(b[k], h, d[k], out=h)
        transform(3)
        if k == depth - 1:
            break
        activate_(h)
        if scratch is not None:
            _permute_columns(h, perms[k], out=scratch)
            torch.mul(scratch, a[k + 1], out=h)
        else:
            h.mul_(a[k + 1])
    return h


def _recompute(x: torch.Tensor, factors: _Factors, activate_, transform_: InPlaceDCT):
    """Every factor's input z_k and spectrum h2_k = C(z_k ⊙ a_k), for the backward pass."""
    depth = factors.depth
    inputs, spectra = [x], []
    for k in range(depth):
        h2 = transform_(torch.mul(inputs[k], factors.a[k]), 2)
        spectra.append(h2)
        if k == depth - 1:
            break
        y = h2 * factors.d[k] if factors.b is None else torch.addcmul(factors.b[k], h2, factors.d[k])
        activate_(transform_(y, 3))
        inputs.append(y if factors.perms is None else _permute_columns(y, factors.perms[k]))
    return inputs, spectra


def acdc_cascade_forward_saving(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                                perms: torch.Tensor | None, activation: str):
    """Forward that keeps what the backward needs, so that it recomputes nothing (``recompute=False``).

    x (M, N) -> ``(y, inside, spectra)``: the output (M, N), every factor's input but the first
    ``inside = [z_1, ..., z_{K-1}]`` and every factor's spectrum ``spectra = [h2_k = C(z_k ⊙ a_k)]``, each (M, N):
    2K-1 extra rows of N per input row, against none for the recomputing forward. One tensor per factor rather
    than one stack: blocks of a few MB are recycled by the allocator, a stack of ~100 MB is mapped afresh (and
    page-faulted) at every step. Computed a block of rows at a time (:func:`row_blocks`), written into those.
    """
    depth = a.shape[0]
    activate_ = activation_spec(activation).apply_
    blocks = row_blocks(x.shape[0], x.shape[-1], eager_cpu(x))
    with serial_torch(x), torch.no_grad():
        factors = _factors(a, d, b, perms)
        transform_ = InPlaceDCT(x[blocks[0]])
        # Recycled buffers on CPU (surgeon.ops.workspace): fresh ones page-fault their whole size every step.
        keep = rows_buffer if eager_cpu(x) else _rows_like
        inside, spectra = [keep(x) for _ in range(depth - 1)], [keep(x) for _ in range(depth)]
        y = _rows_like(x)
        for rows in blocks:
            _saving_rows(x[rows], y[rows], [t[rows] for t in inside], [t[rows] for t in spectra], factors,
                         activate_, transform_)
    return y, inside, spectra


def _rows_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _saving_rows(x, y, inside, spectra, factors: _Factors, activate_, transform_: InPlaceDCT) -> None:
    """One block of :func:`acdc_cascade_forward_saving`, written into its views ``y``, ``inside``, ``spectra``."""
    depth = factors.depth
    for k in range(depth):
        h2 = transform_(torch.mul(x if k == 0 else inside[k - 1], factors.a[k], out=spectra[k]), 2)
        last = k == depth - 1
        target = inside[k] if not last and factors.perms is None else y
        d = factors.d[k]
        spectrum = torch.mul(h2, d, out=target) if factors.b is None else torch.addcmul(factors.b[k], h2, d,
                                                                                         out=target)
        transform_(spectrum, 3)
        if last:
            break
        activate_(target)
        if factors.perms is not None:
            _permute_columns(y, factors.perms[k], out=inside[k])


def acdc_cascade_backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                          b: torch.Tensor | None, perms: torch.Tensor | None, activation: str):
    """Gradients of a cascade (eqs. 3.28–3.32 per factor), recomputing the intermediates from ``x``.

    Returns ``(dx, da, dd, db)`` with shapes (M, N), (K, N), (K, N), (K, N) or None. Each factor's recomputed
    intermediates are reused as scratch once its gradients are taken; on CPU a block of rows at a time.
    """
    activate_ = activation_spec(activation).apply_

    def block_gradients(rows: slice, factors: _Factors, transform_: InPlaceDCT):
        inputs, spectra = _recompute(x[rows], factors, activate_, transform_)
        return _gradients(grad[rows], inputs, spectra, factors, activation, True, transform_)

    return _in_row_blocks(x, a, d, b, perms, block_gradients)


def acdc_cascade_backward_saved(grad: torch.Tensor, x: torch.Tensor, inside: list[torch.Tensor],
                                spectra: list[torch.Tensor], a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                                perms: torch.Tensor | None, activation: str):
    """Gradients from what :func:`acdc_cascade_forward_saving` kept; the saved tensors are left intact."""
    def block_gradients(rows: slice, factors: _Factors, transform_: InPlaceDCT):
        return _gradients(grad[rows], [x[rows], *(t[rows] for t in inside)], [t[rows] for t in spectra], factors,
                          activation, False, transform_)

    return _in_row_blocks(x, a, d, b, perms, block_gradients)


def _in_row_blocks(x: torch.Tensor, a, d, b, perms, block_gradients):
    """``(dx, da, dd, db)`` from ``block_gradients(rows, factors, transform_)`` over the row blocks of ``x``: dx
    written block by block, the parameter gradients summed over blocks."""
    blocks = row_blocks(x.shape[0], x.shape[-1], eager_cpu(x))
    with serial_torch(x), torch.no_grad():
        factors = _factors(a, d, b, perms, inverse=True)
        transform_ = InPlaceDCT(x[blocks[0]])
        if len(blocks) == 1:
            return block_gradients(blocks[0], factors, transform_)
        dx = _rows_like(x)
        totals = None
        for rows in blocks:
            g, *params = block_gradients(rows, factors, transform_)
            dx[rows] = g
            if totals is None:
                totals = params
            else:
                for total, part in zip(totals, params):
                    if total is not None:
                        total.add_(part)
    return (dx, *totals)


def cascade_gradients(grad: torch.Tensor, inputs: list[torch.Tensor], spectra: list[torch.Tensor], a: torch.Tensor,
                      d: torch.Tensor, b: torch.Tensor | None, perms: torch.Tensor | None, activation: str,
                      overwrite: bool):
    """Eqs. 3.28–3.32, last factor first, from every factor's input ``inputs[k] = z_k`` and spectrum
    ``spectra[k] = C(z_k ⊙ a_k)``, all (M, N). ``overwrite``: those (except ``z_0``) may serve as scratch; else
    scratch rows are allocated and they stay untouched. Returns ``(dx, da, dd, db)``."""
    with torch.no_grad():
        return _gradients(grad, inputs, spectra, _factors(a, d, b, perms, inverse=True), activation, overwrite,
                          InPlaceDCT(grad))


def _times_slope_(g: torch.Tensor, z: torch.Tensor, activation: str, scratch: torch.Tensor) -> None:
    """``g ← g ⊙ act'(y)`` from ``z = act(y)``: for ReLU one masking pass (its autograd kernel), else the slope
    of the activation table into ``scratch`` and a product."""
    if activation == "relu":
        torch.ops.aten.threshold_backward.grad_input(g, z, 0, grad_input=g)
        return
    slope_ = activation_spec(activation).slope_
    if slope_ is not None:
        g.mul_(slope_(z, scratch))


def _gradients(grad, inputs, spectra, factors: _Factors, activation: str, overwrite: bool, transform_: InPlaceDCT):
    """:func:`cascade_gradients` on one block with the factors split and the engine resolved by the caller."""
    depth = factors.depth
    n = grad.shape[-1]
    grad_a, grad_d = grad.new_empty(depth, n), grad.new_empty(depth, n)
    grad_b = None if factors.b is None else grad.new_empty(depth, n)
    g = grad.clone(memory_format=torch.contiguous_format)
    spare = None if overwrite else torch.empty_like(g)
    for k in range(depth - 1, -1, -1):
        z = inputs[k]
        # Products go to a scratch block before their column sums: no allocation per factor and block.
        scratch = spectra[k] if spare is None else spare
        transform_(g, 2)                                                  # g3 = C g
        if grad_b is not None:
            torch.sum(g, 0, out=grad_b[k])
        torch.sum(torch.mul(spectra[k], g, out=scratch), 0, out=grad_d[k])   # Σ h2 ⊙ g3
        transform_(g.mul_(factors.d[k]), 3)                               # g1 = Cᵀ(d ⊙ g3)
        torch.sum(torch.mul(z, g, out=scratch), 0, out=grad_a[k])         # Σ z ⊙ g1
        g.mul_(factors.a[k])                                              # ∂L/∂z = a ⊙ g1
        if k == 0:
            break
        # z = act(y)[perm]: apply act' where it lives (permuted), then undo the permutation once.
        _times_slope_(g, z, activation, scratch)
        if factors.inverse is not None:
            g, free = _permute_columns(g, factors.inverse[k - 1], out=scratch), g
            spare = None if spare is None else free
    return g, grad_a, grad_d, grad_b


class RecomputingCascade(torch.autograd.Function):
    """Autograd for a cascade engine that saves only the input rows; its backward recomputes every
    intermediate (§3.10.6). ``forward_fn`` / ``backward_fn`` are the engine: the torch path here, the fused
    Triton kernels in ``surgeon.kernels``; both have the signatures of :func:`acdc_cascade_forward` /
    :func:`acdc_cascade_backward`."""

    @staticmethod
    def forward(ctx, x, a, d, b, perms, activation, forward_fn, backward_fn):
        ctx.activation, ctx.backward_fn = activation, backward_fn
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, a, d, b if b is not None else a.new_empty(0), perms)
        return forward_fn(x, a, d, b, perms, activation)

    @staticmethod
    def backward(ctx, grad):
        x, a, d, b, perms = ctx.saved_tensors
        dx, da, dd, db = ctx.backward_fn(grad.contiguous(), x, a, d, b if ctx.has_bias else None, perms,
                                         ctx.activation)
        return dx, da, dd, db, None, None, None, None


def _as_rows(x: torch.Tensor, n: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    lead = x.shape[:-1]
    return x.reshape(-1, n), lambda out: out.reshape(*lead, out.shape[-1])


def acdc_cascade_ref(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                     perms: torch.Tensor | None, activation: str | None = "relu") -> torch.Tensor:
    """A whole ACDC cascade: x (..., N); a, d (K, N); b (K, N) or None; perms (K-1, N) or None.

    fp16/bf16 inputs and parameters are computed in fp32 and the result cast back to ``x.dtype``;
    gradients come back in each parameter's own dtype.
    """
    activation = canonical_activation(activation)
    n = x.shape[-1]
    if a.shape != d.shape or a.dim() != 2 or a.shape[1] != n:
        raise ValueError(f"diagonals must both be (K, {n}); got {tuple(a.shape)} and {tuple(d.shape)}")
    compute = compute_dtype(x.dtype)
    rows, restore = _as_rows(x, n)
    params = [t if t is None else t.to(compute) for t in (a, d, b)]
    out = RecomputingCascade.apply(rows.to(compute), *params, perms, activation, acdc_cascade_forward,
                                   acdc_cascade_backward)
    return restore(out.to(x.dtype))
