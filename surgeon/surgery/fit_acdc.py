"""Closed-form fitting of a linear ACDC cascade: alternating least squares over its diagonals, in Gram form.

A linear cascade (``activation=None``) maps rows as ``x ↦ x Φ + o``: factor k is ``y_k = z_k F_k + b_k C`` with
``F_k = diag(a_k) Cᵀ diag(d_k) C`` (thesis eq. 3.24, rows times matrices), followed by the fixed permutation
``Π_k``. Its biases only ever add one constant output offset ``o``; with the others fixed, the last bias alone
reaches every offset, so the fit eliminates the offset (centred second moments, then the last bias set to the
optimal offset) and alternates over the diagonals, each of which enters the output linearly. For factor k with
input rows ``Z`` and downstream map ``M_k`` (N, out), with ``P = C M_k`` and ``Q = Cᵀ diag(d_k) P``::

    a_k:  min ‖(Z ⊙ a) Q − T‖²      normal equations  ((Q Qᵀ) ⊙ (ZᵀZ)) a = rowsum((Zᵀ T) ⊙ Q)
    d_k:  min ‖(H ⊙ d) P − T‖²      H = (Z ⊙ a) Cᵀ,  ((P Pᵀ) ⊙ (HᵀH)) d = rowsum((Hᵀ T) ⊙ P)

Every N×N block is carried from factor to factor by transforms instead of products: ``Z_{k+1}ᵀ Z_{k+1} =
Π_kᵀ Cᵀ D_k (C A_k ZᵀZ A_k Cᵀ) D_k C Π_k`` (the middle factor is ``HᵀH``), and downstream
``M_{k-1} M_{k-1}ᵀ = Π A_k (Q_k Q_kᵀ) A_k Πᵀ``. So one factor update costs about seven N×N DCT passes and two
N×N Cholesky solves, whatever the number of calibration rows (:mod:`surgeon.surgery.moments`). Sweeps alternate
direction: a forward sweep reuses the downstream blocks of the previous backward sweep and vice versa.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import scipy.fft
import torch

from surgeon.primitives import dct_matrix
from surgeon.surgery.moments import Moments, solve_damped

_CALLER_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("fit_caller_threads", default=None)

# N×N blocks up to this many elements are transformed by one pocketfft thread (N ≤ 512).
SERIAL_FFT_ELEMENTS = 2**18

# Below this size a dense DCT matmul beats the FFT call overhead for the (N, N) products a sweep needs.
DENSE_DCT_LIMIT = 128


class RowDCT:
    """``X ↦ X Cᵀ`` (``forward``) and ``X ↦ X C`` (``inverse``) on rows of size N (in the rows' dtype), and their
    two-sided forms on N×N blocks (one pocketfft call over both axes: no transposed copies)."""

    def __init__(self, n: int, workers: int | None = None) -> None:
        dense = dct_matrix(n, dtype=torch.float64) if n <= DENSE_DCT_LIMIT else None
        self.matrix = None if dense is None else {torch.float64: dense, torch.float32: dense.float()}
        # pocketfft starts its worker threads per call: on blocks that fit in cache one thread is faster
        self.workers = 1 if n * n <= SERIAL_FFT_ELEMENTS else workers or max(1, torch.get_num_threads())

    def _fft(self, fn, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(fn(x.contiguous().numpy(), type=2, norm="ortho", axis=-1, workers=self.workers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix[x.dtype].T if self.matrix is not None else self._fft(scipy.fft.dct, x)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix[x.dtype] if self.matrix is not None else self._fft(scipy.fft.idct, x)

    def sandwich(self, g: torch.Tensor) -> torch.Tensor:
        """``C G Cᵀ`` for G (N, N)."""
        if self.matrix is not None:
            return self.matrix[g.dtype] @ g @ self.matrix[g.dtype].T
        return torch.from_numpy(scipy.fft.dctn(g.numpy(), type=2, norm="ortho", workers=self.workers))

    def sandwich_inverse(self, g: torch.Tensor) -> torch.Tensor:
        """``Cᵀ G C`` for G (N, N)."""
        if self.matrix is not None:
            return self.matrix[g.dtype].T @ g @ self.matrix[g.dtype]
        return torch.from_numpy(scipy.fft.idctn(g.numpy(), type=2, norm="ortho", workers=self.workers))


def _scaled(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``diag(v) G diag(v)``."""
    return g * v.unsqueeze(0) * v.unsqueeze(1)


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


def _permuted(g: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Rows and columns of a square block reindexed by ``perm`` (``Πᵀ G Π``)."""
    return g if perm is None else g.index_select(0, perm).index_select(1, perm)


def apply_rows(state: CascadeState, t: RowDCT, x: torch.Tensor, skip_last_bias: bool = False) -> torch.Tensor:
    """The cascade applied to rows ``x`` (m, in) in float64, exactly as the layer computes it; (m, out)."""
    z = torch.zeros(x.shape[0], state.size, dtype=torch.float64)
    z[:, : state.in_features] = x.double()
    for k in range(state.depth):
        z = t.forward(z * state.a[k]) * state.d[k]
        if state.b is not None and not (skip_last_bias and k == state.depth - 1):
            z = z + state.b[k]
        z = t.inverse(z)
        perm = state.perm(k)
        z = z if perm is None else z[:, perm]
    return z[:, : state.out_features]


@dataclass
class Problem:
    """A fitting problem in the cascade's padded coordinates: ``Σ ‖z₀ Φ − t‖²`` as ``tr(Φᵀ G Φ) − 2 tr(Φᵀ X) +
    energy``; centred (``mean_in``/``mean_out`` set) when the cascade has biases to absorb the offset."""

    gram: torch.Tensor               # (N, N)
    cross: torch.Tensor              # Xᵀ = Tᵀ Z₀ (out, N)
    energy: float
    raw_energy: float                # ‖T‖², the denominator of the relative error
    mean_in: torch.Tensor | None     # (in,)
    mean_out: torch.Tensor | None    # (out,)

    @property
    def dtype(self) -> torch.dtype:
        return self.gram.dtype

    @classmethod
    def of(cls, moments: Moments, size: int, offset: bool, dtype: torch.dtype = torch.float64) -> Problem:
        """The moments centred (``offset``) and padded to ``size``; the blocks a sweep carries in ``dtype``."""
        n_in = moments.gram.shape[0] - 1
        gram, cross, energy = moments.gram[:n_in, :n_in], moments.cross[:n_in], moments.target_energy
        mean_in = mean_out = None
        if offset and moments.rows > 0:
            sums, target_sum, rows = moments.input_sum[:n_in], moments.target_sum, moments.rows
            gram = gram - torch.outer(sums, sums) / rows
            cross = cross - torch.outer(sums, target_sum) / rows
            energy = energy - float(target_sum @ target_sum) / rows
            mean_in, mean_out = sums / rows, target_sum / rows
        padded = torch.zeros(size, size, dtype=torch.float64)
        padded[:n_in, :n_in] = gram
        padded_cross = torch.zeros(cross.shape[1], size, dtype=torch.float64)
        padded_cross[:, :n_in] = cross.T
        return cls(padded.to(dtype), padded_cross.to(dtype), energy, moments.target_energy, mean_in, mean_out)

    def relative(self, objective: float) -> float:
        if self.raw_energy <= 0:
            return 0.0 if objective <= 0 else math.inf
        return math.sqrt(max(0.0, objective) / self.raw_energy)


def _solve(system: torch.Tensor, rhs: torch.Tensor, current: torch.Tensor, damping: float,
           energy: float) -> tuple[torch.Tensor, float]:
    """The damped block solution v (float64) and the (undamped) objective ``vᵀ G v − 2 rhsᵀ v + energy`` it
    reaches, from ``(G + λI) v = rhs + λ current`` without another product with G."""
    value, lam = solve_damped(system, rhs, current, damping)
    rhs = rhs.double()
    return value, float(value @ (rhs + lam * (current.double() - value)) - 2 * (rhs @ value)) + energy


def _diag(values: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return values[k].to(dtype)


def _downstream_end(state: CascadeState, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(M Mᵀ, Mᵀ) after the last factor: the output keeps the first ``out`` coordinates."""
    mt = torch.zeros(state.out_features, state.size, dtype=dtype)
    mt[:, : state.out_features] = torch.eye(state.out_features, dtype=dtype)
    kept = torch.zeros(state.size, dtype=dtype)
    kept[: state.out_features] = 1
    return torch.diag(kept), mt


def forward_sweep(state: CascadeState, t: RowDCT, problem: Problem, downstream: list, damping: float
                  ) -> tuple[list, float]:
    """Update a_k then d_k for k = 0..K-1 with the downstream blocks of a backward sweep; returns the upstream
    blocks (ZᵀZ, TᵀZ, HᵀH, TᵀH) per factor and the objective."""
    g, xt, objective, w = problem.gram, problem.cross, problem.energy, problem.dtype
    upstream = []
    for k in range(state.depth):
        ppt, pt, qqt, qt = downstream[k]       # d_k has not changed since they were built
        state.a[k], objective = _solve(qqt * g, (xt * qt).sum(0), state.a[k], damping, problem.energy)
        a = _diag(state.a, k, w)
        hh, hxt = t.sandwich(_scaled(g, a)), t.forward(xt * a)
        upstream.append((g, xt, hh, hxt))
        state.d[k], objective = _solve(ppt * hh, (hxt * pt).sum(0), state.d[k], damping, problem.energy)
        d, perm = _diag(state.d, k, w), state.perm(k)
        g = _permuted(t.sandwich_inverse(_scaled(hh, d)), perm)
        xt = t.inverse(hxt * d)
        xt = xt if perm is None else xt.index_select(1, perm)
    return upstream, objective


def backward_sweep(state: CascadeState, t: RowDCT, problem: Problem, upstream: list | None,
                   damping: float) -> tuple[list, float]:
    """Update d_k then a_k for k = K-1..0 with the upstream blocks of a forward sweep (with ``upstream=None``,
    only build the downstream blocks); returns the downstream blocks (PPᵀ, Pᵀ, QQᵀ, Qᵀ) per factor and the
    objective."""
    w = problem.dtype
    mm, mt = _downstream_end(state, w)
    downstream: list = [None] * state.depth
    objective = math.nan
    for k in range(state.depth - 1, -1, -1):
        ppt, pt = t.sandwich(mm), t.forward(mt)
        if upstream is not None:
            g, xt, hh, hxt = upstream[k]      # a_k has not changed since they were built
            state.d[k], objective = _solve(ppt * hh, (hxt * pt).sum(0), state.d[k], damping, problem.energy)
        d = _diag(state.d, k, w)
        qqt, qt = t.sandwich_inverse(_scaled(ppt, d)), t.inverse(pt * d)
        downstream[k] = (ppt, pt, qqt, qt)
        if upstream is not None:
            state.a[k], objective = _solve(qqt * g, (xt * qt).sum(0), state.a[k], damping, problem.energy)
        if k > 0:
            a, inverse = _diag(state.a, k, w), state.inverse_perm(k - 1)
            mm, mt = _permuted(_scaled(qqt, a), inverse), qt * a
            mt = mt if inverse is None else mt.index_select(1, inverse)
    return downstream, objective


def set_offset(state: CascadeState, t: RowDCT, problem: Problem) -> None:
    """Give the last bias the optimal output offset (mean target minus the cascade at the mean input)."""
    if state.b is None or problem.mean_in is None or problem.mean_out is None:
        return
    rest = apply_rows(state, t, problem.mean_in.unsqueeze(0), skip_last_bias=True)[0]
    spectrum = t.inverse(state.b[-1:].clone())[0]          # the last bias as it reaches the output: b C
    spectrum[: state.out_features] = problem.mean_out - rest
    state.b[-1] = t.forward(spectrum.unsqueeze(0))[0]


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


def cascade_error(state: CascadeState, t: RowDCT, moments: Moments) -> float:
    """Relative output error on the moments' rows (pushed through the cascade when the moments keep them)."""
    if moments.inputs is not None:
        return moments.row_error(apply_rows(state, t, moments.inputs))
    return moments.relative_error(affine_map(state, t))


def affine_map(state: CascadeState, t: RowDCT) -> torch.Tensor:
    """The cascade as one affine map Φ_aug (in+1, out): its rows for the unit inputs, then the offset."""
    rows = apply_rows(state, t, torch.eye(state.in_features + 1, state.in_features, dtype=torch.float64))
    return torch.cat([rows[:-1] - rows[-1:], rows[-1:]])


def default_sweeps(size: int) -> int:
    """The sweep cap of a default fit: 12 at N = 256, in inverse proportion to N (a sweep costs between
    N² log N and N³), between 4 and 40 — about one second per 256-wide depth-12 layer on two cores."""
    return max(4, min(40, round(3072 / size)))


@contextmanager
def single_threaded_torch() -> Iterator[int]:
    """Torch on one thread for the block; yields the thread count it had. A sweep is a chain of short N×N kernels
    (Hadamard products, Cholesky, gathers) between pocketfft calls: OpenMP's fork/join and busy-waiting cost more
    than a second thread gains (measured on 2 shared cores: 3× at N = 1024, 15–35× at N = 256, same result).
    Nested blocks yield the outermost count."""
    before = torch.get_num_threads()
    threads = _CALLER_THREADS.get() or before
    token = _CALLER_THREADS.set(threads)
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
        _CALLER_THREADS.reset(token)


def fit_cascade(layer, train: Moments, held: Moments, *, sweeps: int | None = None, damping: float = 1e-3,
                tolerance: float = 2e-3, patience: int = 2, stop_at: float | None = None,
                dtype: torch.dtype = torch.float32, fft_workers: int | None = None) -> tuple[float, float]:
    """Fit a linear ACDCLinear in place by alternating sweeps; keeps the parameters with the lowest held-out
    error seen, the starting ones included. Returns (held-out, train) relative errors of the kept parameters.

    Stops after ``sweeps`` sweeps (default: :func:`default_sweeps`; a sweep runs forward or backward through the
    cascade, and the held-out error is checked after each forward + backward pair), or once ``patience`` checks in
    a row have not lowered it by a ``tolerance`` fraction of its best value, or (time-to-accuracy benchmarks) once
    it is at most ``stop_at``.
    ``dtype``: the precision of the N×N blocks a sweep carries (float32 halves the transform time; the solves are
    refined and every error is measured in float64). Torch runs single-threaded (:func:`single_threaded_torch`);
    pocketfft uses ``fft_workers`` threads (default: torch's thread count before the fit)."""
    with torch.no_grad(), single_threaded_torch() as threads:
        return _fit_cascade(layer, train, held, sweeps=sweeps, damping=damping, tolerance=tolerance,
                            patience=patience, stop_at=stop_at, dtype=dtype, workers=fft_workers or threads)


def _fit_cascade(layer, train: Moments, held: Moments, *, sweeps: int | None, damping: float, tolerance: float,
                 patience: int, stop_at: float | None, dtype: torch.dtype, workers: int) -> tuple[float, float]:
    t = RowDCT(layer.size, workers)
    state = state_of(layer)
    problem = Problem.of(train, state.size, offset=state.b is not None, dtype=dtype)
    best, best_state, best_train = cascade_error(state, t, held), copy_state(state), math.nan
    downstream, _ = backward_sweep(state, t, problem, None, damping)
    upstream, stale = None, 0
    count = default_sweeps(state.size) if sweeps is None else sweeps
    for sweep in range(count):
        if upstream is None:
            upstream, objective = forward_sweep(state, t, problem, downstream, damping)
            if sweep < count - 1:
                continue        # held-out checks after each forward + backward pair (and the last sweep)
        else:
            (downstream, objective), upstream = backward_sweep(state, t, problem, upstream, damping), None
        set_offset(state, t, problem)
        error = cascade_error(state, t, held)
        improved = error < best * (1 - tolerance)
        if error < best:
            best, best_state, best_train = error, copy_state(state), problem.relative(objective)
        stale = 0 if improved else stale + 1
        if stale >= patience or (stop_at is not None and best <= stop_at):
            break
    if math.isnan(best_train):      # no sweep beat the start
        best_train = cascade_error(best_state, t, train)
    load_state(layer, best_state)
    return best, best_train
