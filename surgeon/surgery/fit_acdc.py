"""Closed-form fitting of a linear ACDC cascade: alternating least squares over its diagonals, in Gram form.

A linear cascade (``activation=None``) is affine in each of its diagonals when the others are fixed. For factor k
with input ``z_k = x_aug E_k`` (E_k: the upstream affine map, (in+1, N)) and the downstream map
``out = y_k M_k + c_k`` (M_k: (N, out), c_k: the downstream biases), factor k's output is
``y_k = ((z_k ⊙ a_k) Cᵀ ⊙ d_k + b_k) C`` (thesis eq. 3.24, §3.10.7.2), so with ``P = C M_k`` and
``Q = Cᵀ diag(d_k) P`` the three block problems are

    a_k:  min ‖(Z ⊙ a) Q − R‖²      normal equations  ((Q Qᵀ) ⊙ (ZᵀZ)) a = rowsum((Zᵀ R) ⊙ Q)
    d_k:  min ‖(H ⊙ d) P − R‖²      H = (Z ⊙ a) Cᵀ,  ((P Pᵀ) ⊙ (HᵀH)) d = rowsum((Hᵀ R) ⊙ P)
    b_k:  min ‖1 (b P) − R‖²        (m P Pᵀ) b = P (Rᵀ 1)

where R is the target minus everything else. ``ZᵀZ = E_kᵀ S E_k`` and ``Zᵀ T = E_kᵀ B`` come from the
calibration moments (:mod:`surgeon.surgery.moments`), so a sweep costs O(K N³) whatever the number of rows. Sweeps
alternate direction: a forward sweep reuses the downstream maps of the previous backward sweep and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.ops.dct import dct, dct_matrix, idct
from surgeon.surgery.moments import Moments, solve_damped

# Below this size a dense DCT matmul beats the FFT call overhead for the (N, N) products a sweep needs.
DENSE_DCT_LIMIT = 128


class RowDCT:
    """``X ↦ X Cᵀ`` (``forward``) and ``X ↦ X C`` (``inverse``) on float64 rows of size N."""

    def __init__(self, n: int) -> None:
        self.matrix = dct_matrix(n) if n <= DENSE_DCT_LIMIT else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.T if self.matrix is not None else dct(x.contiguous())

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix if self.matrix is not None else idct(x.contiguous())

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """``C X`` for X (N, m)."""
        return self.forward(x.T.contiguous()).T


@dataclass
class CascadeState:
    """Float64 diagonals of a cascade being fitted: a, d (K, N), b (K, N) or None, perms (K-1, N) or None."""

    a: torch.Tensor
    d: torch.Tensor
    b: torch.Tensor | None
    perms: torch.Tensor | None
    in_features: int
    out_features: int

    @property
    def depth(self) -> int:
        return self.a.shape[0]

    @property
    def size(self) -> int:
        return self.a.shape[1]

    def perm(self, k: int) -> torch.Tensor | None:
        return None if self.perms is None or k >= self.depth - 1 else self.perms[k]

    def inverse_perm(self, k: int) -> torch.Tensor | None:
        perm = self.perm(k)
        return None if perm is None else torch.argsort(perm)


def _input_map(state: CascadeState) -> torch.Tensor:
    """E_0 (in+1, N): the padded identity; the last (constant) row carries offsets, zero at the input."""
    e = torch.zeros(state.in_features + 1, state.size, dtype=torch.float64)
    e[: state.in_features, : state.in_features] = torch.eye(state.in_features, dtype=torch.float64)
    return e


def _through_factor(rows: torch.Tensor, state: CascadeState, k: int, t: RowDCT,
                    offset_weights: torch.Tensor | None) -> torch.Tensor:
    """Rows pushed through factor k and the permutation after it. ``offset_weights`` (rows,) says how much of the
    bias each row receives (the constant coordinate of x_aug for E, ``S[:, -1]`` for F = S E)."""
    out = t.inverse(t.forward(rows * state.a[k]) * state.d[k])
    if state.b is not None and offset_weights is not None:
        out = out + torch.outer(offset_weights, t.inverse(state.b[k:k + 1])[0])
    perm = state.perm(k)
    return out if perm is None else out[:, perm]


def affine_map(state: CascadeState, t: RowDCT) -> torch.Tensor:
    """The cascade as one affine map Φ_aug (in+1, out)."""
    e = _input_map(state)
    unit = torch.zeros(e.shape[0], dtype=torch.float64)
    unit[-1] = 1.0
    for k in range(state.depth):
        e = _through_factor(e, state, k, t, unit)
    return e[:, : state.out_features]


def _downstream(state: CascadeState, t: RowDCT, k: int, mt_next: torch.Tensor, c_next: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M_kᵀ, c_k) from (M_{k+1}ᵀ, c_{k+1}): one step of the backward recursion."""
    lm = t.inverse(t.forward(mt_next) * state.d[k + 1]) * state.a[k + 1]        # (L_{k+1} M_{k+1})ᵀ
    c = c_next if state.b is None else c_next + mt_next @ t.inverse(state.b[k + 1:k + 2])[0]
    inverse = state.inverse_perm(k)
    return (lm if inverse is None else lm[:, inverse]), c


def _last_downstream(state: CascadeState) -> tuple[torch.Tensor, torch.Tensor]:
    mt = torch.zeros(state.out_features, state.size, dtype=torch.float64)
    mt[:, : state.out_features] = torch.eye(state.out_features, dtype=torch.float64)
    return mt, torch.zeros(state.out_features, dtype=torch.float64)


def _gram(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``leftᵀ right`` for the N×N normal-equation blocks, multiplied in float32 (twice the BLAS throughput; the
    damped solves and all error evaluations stay in float64)."""
    return (left.T.float() @ right.float()).double()


def _update_factor(state: CascadeState, k: int, t: RowDCT, moments: Moments, e: torch.Tensor, f: torch.Tensor,
                   mt: torch.Tensor, c: torch.Tensor, damping: float, blocks: str = "adb") -> None:
    """Exact (damped) block minimisation over a_k, then d_k, then b_k (those named in ``blocks``), in place."""
    zz = _gram(e, f)                                        # ZᵀZ (N, N)
    z_sum = e.T @ moments.input_sum                         # Zᵀ1 (N,)
    zt = e.T @ moments.cross - torch.outer(z_sum, c)        # Zᵀ(T − 1c) (N, out)
    pt = t.forward(mt)                                      # Pᵀ = M_kᵀ Cᵀ (out, N)
    ppt = _gram(pt, pt)
    bias_out = pt.new_zeros(state.out_features) if state.b is None else pt @ state.b[k]   # b P (out,)
    # a_k
    qt = t.inverse(pt * state.d[k])                         # Qᵀ (out, N)
    residual = zt - torch.outer(z_sum, bias_out)
    if "a" in blocks:
        state.a[k] = solve_damped(_gram(qt, qt) * zz, (residual * qt.T).sum(1), state.a[k], damping)
    # d_k
    scaled = zz * state.a[k].unsqueeze(0) * state.a[k].unsqueeze(1)
    hh = t.columns(t.forward(scaled))                       # C diag(a) ZᵀZ diag(a) Cᵀ
    ht = t.columns(residual * state.a[k].unsqueeze(1))      # Hᵀ(T − 1c − 1bP)
    if "d" in blocks:
        state.d[k] = solve_damped(ppt * hh, (ht * pt.T).sum(1), state.d[k], damping)
    # b_k
    if state.b is not None and "b" in blocks:
        h_sum = t.forward((state.a[k] * z_sum).unsqueeze(0))[0]                     # Hᵀ1
        rest = moments.target_sum - moments.rows * c - pt @ (h_sum * state.d[k])  # (T − 1c − (H⊙d)P)ᵀ1
        state.b[k] = solve_damped(moments.rows * ppt, pt.T @ rest, state.b[k], damping)


def forward_sweep(state: CascadeState, t: RowDCT, moments: Moments, downstream: list, damping: float) -> list:
    """Update factors 0..K-1 in order; returns the upstream maps (E_k, F_k = S E_k) used, for a backward sweep."""
    e = _input_map(state)
    f = moments.gram @ e
    unit = torch.zeros(e.shape[0], dtype=torch.float64)
    unit[-1] = 1.0
    upstream = []
    for k in range(state.depth):
        upstream.append((e, f))
        _update_factor(state, k, t, moments, e, f, *downstream[k], damping)
        e = _through_factor(e, state, k, t, unit)
        f = _through_factor(f, state, k, t, moments.input_sum)
    return upstream


def backward_sweep(state: CascadeState, t: RowDCT, moments: Moments, upstream: list | None,
                   damping: float | None) -> list:
    """Update factors K-1..0 (or, with ``damping=None``, only compute the downstream maps); returns them."""
    mt, c = _last_downstream(state)
    downstream: list = [None] * state.depth
    for k in range(state.depth - 1, -1, -1):
        if k < state.depth - 1:
            mt, c = _downstream(state, t, k, mt, c)
        downstream[k] = (mt, c)
        if damping is not None and upstream is not None:
            _update_factor(state, k, t, moments, *upstream[k], mt, c, damping)
    return downstream


def state_of(layer) -> CascadeState:
    """A float64 working copy of an :class:`~surgeon.layers.acdc.ACDCLinear`'s diagonals."""
    return CascadeState(layer.a.detach().double().cpu().clone(), layer.d.detach().double().cpu().clone(),
                        None if layer.b is None else layer.b.detach().double().cpu().clone(),
                        None if layer.perms is None else layer.perms.cpu(), layer.in_features, layer.out_features)


@torch.no_grad()
def load_state(layer, state: CascadeState) -> None:
    layer.a.copy_(state.a.to(layer.a))
    layer.d.copy_(state.d.to(layer.d))
    if layer.b is not None and state.b is not None:
        layer.b.copy_(state.b.to(layer.b))


def copy_state(state: CascadeState) -> CascadeState:
    return CascadeState(state.a.clone(), state.d.clone(), None if state.b is None else state.b.clone(),
                        state.perms, state.in_features, state.out_features)


def _extrapolate(before: CascadeState, after: CascadeState, step: float) -> CascadeState:
    out = copy_state(after)
    out.a = before.a + step * (after.a - before.a)
    out.d = before.d + step * (after.d - before.d)
    if out.b is not None and before.b is not None:
        out.b = before.b + step * (after.b - before.b)
    return out


@torch.no_grad()
def fit_cascade(layer, train: Moments, held: Moments, *, sweeps: int = 16, damping: float = 1e-3,
                patience: int = 3, accelerate: float = 0.5, stop_at: float | None = None) -> tuple[float, float]:
    """Fit a linear ACDCLinear in place by alternating sweeps; keeps the parameters with the lowest held-out
    error seen, the starting ones included. Returns (held-out, train) relative errors of the kept parameters.

    ``accelerate``: after each sweep, also try moving ``1 + accelerate·sweep^(1/3)`` times the sweep's step
    (ALS line extrapolation) and keep it when it lowers the training error. ``stop_at``: stop once the held-out
    error is at most this (time-to-accuracy benchmarks)."""
    t = RowDCT(layer.size)
    state = state_of(layer)
    best_map = affine_map(state, t)
    best, best_state = held.relative_error(best_map), copy_state(state)
    best_train = train.relative_error(best_map)
    downstream, upstream, stale = backward_sweep(state, t, train, None, None), None, 0
    for sweep in range(sweeps):
        before = copy_state(state)
        if upstream is None:
            upstream = forward_sweep(state, t, train, downstream, damping)
        else:
            downstream, upstream = backward_sweep(state, t, train, upstream, damping), None
        phi = affine_map(state, t)
        if accelerate > 0 and sweep > 0:
            trial = _extrapolate(before, state, 1 + accelerate * (sweep + 1) ** (1 / 3))
            trial_phi = affine_map(trial, t)
            if train.squared_error(trial_phi) < train.squared_error(phi):
                state, phi = trial, trial_phi
                # the stored maps belong to the un-extrapolated state: a forward sweep on fresh downstream maps
                downstream, upstream = backward_sweep(state, t, train, None, None), None
        error = held.relative_error(phi)
        if error < best:
            best, best_state, best_train, stale = error, copy_state(state), train.relative_error(phi), 0
            if stop_at is not None and best <= stop_at:
                break
        else:
            stale += 1
            if stale >= patience:
                break
    load_state(layer, best_state)
    return best, best_train
