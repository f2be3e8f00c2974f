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
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from surgeon.ops.dct import dct, idct

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "none")
_LEAKY_SLOPE = 0.01


def canonical_activation(activation: str | None) -> str:
    """Normalise an activation name (``None`` means linear) and reject unknown ones."""
    name = "none" if activation is None else str(activation).lower()
    if name in ("identity", "linear"):
        name = "none"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)} or None")
    return name


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(y, _LEAKY_SLOPE)
    if activation == "tanh":
        return torch.tanh(y)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return y


def _activation_slope(out: torch.Tensor, activation: str) -> torch.Tensor | None:
    """act'(y) written in terms of the activation's output, so the pre-activation need not be kept."""
    if activation == "relu":
        return (out > 0).to(out.dtype)
    if activation == "leaky_relu":
        return torch.where(out > 0, 1.0, _LEAKY_SLOPE).to(out.dtype)
    if activation == "tanh":
        return 1 - out * out
    if activation == "sigmoid":
        return out * (1 - out)
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _factor_forward(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None):
    h2 = dct(x * a)
    h3 = h2 * d
    if b is not None:
        h3 = h3 + b
    return h2, idct(h3)


def acdc_factor_ref(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """One ACDC factor ``Cᵀ(C(x ⊙ a) ⊙ d + b)``: x (..., N), a/d/b (N,) -> (..., N). Differentiable."""
    return acdc_cascade_ref(x, a.unsqueeze(0), d.unsqueeze(0), None if b is None else b.unsqueeze(0), None, "none")


def _cascade_forward(x, a, d, b, perms, activation, keep: bool):
    """Run the cascade on (M, N) rows. With ``keep`` also return every factor input and every h2."""
    depth = a.shape[0]
    inputs, spectra = [], []
    h = x
    for k in range(depth):
        h2, y = _factor_forward(h, a[k], d[k], None if b is None else b[k])
        if keep:
            inputs.append(h)
            spectra.append(h2)
        if k < depth - 1:
            y = apply_activation(y, activation)
            if perms is not None:
                y = y[:, perms[k]]
        h = y
    return h, inputs, spectra


# Rows processed together: small enough that a block and its intermediates stay in L2 cache, large enough that
# per-call overheads of the transforms vanish. Deep cascades are memory-bound, so this matters more than FLOPs.
_BLOCK_BYTES = 1 << 19


def _row_blocks(m: int, n: int, itemsize: int) -> list[slice]:
    rows = max(1, _BLOCK_BYTES // max(1, n * itemsize))
    return [slice(start, min(m, start + rows)) for start in range(0, m, rows)]


def acdc_cascade_forward(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                         perms: torch.Tensor | None, activation: str) -> torch.Tensor:
    """Forward of a K-factor cascade: x (M, N); a, d, b (K, N); perms (K-1, N) int64 or None -> (M, N)."""
    blocks = _row_blocks(*x.shape, x.element_size())
    if len(blocks) == 1:
        return _cascade_forward(x, a, d, b, perms, activation, keep=False)[0]
    out = torch.empty_like(x)
    for rows in blocks:
        out[rows] = _cascade_forward(x[rows], a, d, b, perms, activation, keep=False)[0]
    return out


def _cascade_backward_block(grad, x, a, d, b, perms, inverse, activation, grads):
    depth = a.shape[0]
    _, inputs, spectra = _cascade_forward(x, a, d, b, perms, activation, keep=True)
    grad_a, grad_d, grad_b = grads
    g = grad
    for k in range(depth - 1, -1, -1):
        g3 = dct(g)
        if grad_b is not None:
            grad_b[k] += g3.sum(0)
        grad_d[k] += (spectra[k] * g3).sum(0)
        g1 = idct(g3 * d[k])
        grad_a[k] += (inputs[k] * g1).sum(0)
        g = g1 * a[k]
        if k > 0:
            post = inputs[k]
            if inverse is not None:
                g, post = g[:, inverse[k - 1]], post[:, inverse[k - 1]]
            slope = _activation_slope(post, activation)
            if slope is not None:
                g = g * slope
    return g


def acdc_cascade_backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                          b: torch.Tensor | None, perms: torch.Tensor | None, activation: str):
    """Gradients of a cascade (eqs. 3.28–3.32 per factor), recomputing the intermediates from ``x``.

    Returns ``(dx, da, dd, db)`` with shapes (M, N), (K, N), (K, N), (K, N) or None. Rows are processed in
    cache-sized blocks; only one block's intermediates exist at a time.
    """
    inverse = None if perms is None else torch.argsort(perms, dim=-1)
    grads = (torch.zeros_like(a), torch.zeros_like(d), None if b is None else torch.zeros_like(b))
    blocks = _row_blocks(*x.shape, x.element_size())
    if len(blocks) == 1:
        dx = _cascade_backward_block(grad, x, a, d, b, perms, inverse, activation, grads)
    else:
        dx = torch.empty_like(x)
        for rows in blocks:
            dx[rows] = _cascade_backward_block(grad[rows], x[rows], a, d, b, perms, inverse, activation, grads)
    return (dx, *grads)


class _ACDCCascade(torch.autograd.Function):
    """Saves only the input rows; every intermediate is recomputed in backward (§3.10.6)."""

    @staticmethod
    def forward(ctx, x, a, d, b, perms, activation):
        ctx.activation = activation
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, a, d, b if b is not None else a.new_empty(0), perms)
        return acdc_cascade_forward(x, a, d, b, perms, activation)

    @staticmethod
    def backward(ctx, grad):
        x, a, d, b, perms = ctx.saved_tensors
        b = b if ctx.has_bias else None
        dx, da, dd, db = acdc_cascade_backward(grad.contiguous(), x, a, d, b, perms, ctx.activation)
        return dx, da, dd, db, None, None


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
    compute = _compute_dtype(x.dtype)
    rows, restore = _as_rows(x, n)
    params = [t if t is None else t.to(compute) for t in (a, d, b)]
    out = _ACDCCascade.apply(rows.to(compute), *params, perms, activation)
    return restore(out.to(x.dtype))
