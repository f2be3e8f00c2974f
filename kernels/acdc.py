"""Fused Triton kernels for ACDC factors and whole ACDC cascades (thesis §3.10, eqs. 3.24–3.32).

One factor maps a row ``x`` of size N to ``y = Cᵀ(C(x ⊙ a) ⊙ d + b)`` (C: orthonormal DCT-II, eq. 3.27); a
cascade chains K factors with ``z_{k+1} = act(y_k)[perm_k]`` between them. One program handles a tile of rows
at a time (persistent loop over tiles) and runs every factor of the cascade on it before writing the output.

Transform (O(N log N)-style, never a dense N x N matrix for N > 128)
---------------------------------------------------------------------
DCT-II through Makhoul's reordering onto one length-N complex FFT, the FFT split Cooley–Tukey style as
``N = N1·N2`` (``N1 = 2^ceil(log2(N)/2)``, both ≥ 16 so every product is a legal ``tl.dot``)::

    v[m]   = x[src(m)],  src(m) = 2m (m < N/2), 2N-1-2m (m ≥ N/2)     (tile T[n1, n2] = v[N2·n1 + n2])
    A      = F1 @ T                         F1[k1, n1] = exp(-2πi k1 n1 / N1)
    A     *= W                              W[k1, n2]  = exp(-2πi k1 n2 / N)       (twiddles)
    X      = A @ F2                         F2[n2, k2] = exp(-2πi n2 k2 / N2)      (X[k1, k2] = V[k1 + N1·k2])
    Y[k]   = s_k · Re(V[k] · exp(-iπk / 2N))                                         (post-twiddle, s_k ortho)

The DCT-III needs no Hermitian reflection: with ``U[k] = s_k Y[k] exp(+iπk/2N)`` and ``u = Σ_k U[k] e^{2πi kn/N}``
one has ``x[src(m)] = Re u[m]``; the same split run backwards (``conj(F2)``, ``conj(W)``, ``conj(F1)``) takes
the frequency tile ``[k1, k2]`` straight back to the sample tile ``[n1, n2]``. Complex products are real
``tl.dot`` pairs. Per row this costs ``O(N·(N1 + N2))`` multiply-adds in 16–128 wide tensor-core blocks instead
of ``O(N²)``. For N ≤ 128 a tile of 16 rows is multiplied by the dense C (allowed by the brief up to 256).

All arithmetic is fp32 whatever the I/O dtype (fp32, bf16, fp16); fp32 inputs use ``input_precision="ieee"``
dots, 16-bit inputs ``"tf32"``.

Memory
------
Sample and frequency tiles of one row stay in registers between the stages and across the K factors. The only
round trip is the fixed permutation between factors: a tile cannot be permuted in registers, so it goes through
a per-program fp32 scratch row (``P × N`` floats, P ≈ 2 × #SMs, i.e. L2-resident, not batch-sized). Without
permutations the whole cascade never leaves the chip. For N > 4096 the 128-wide fp32 tiles exceed the register
file and Triton spills to local memory (L1/L2 backed). At N = 16384 the tile's ``tl.dot`` operands would need
more shared memory than a block may have, so those rows (and any N a smaller GPU has no room for: the launch
raises ``OutOfResources`` before running) go to :mod:`surgeon.kernels.acdc_staged`, which streams the tile in
slabs through an L2-resident scratch row.

Backward (eqs. 3.28–3.32, nothing divided by a diagonal) recomputes: a forward sweep writes each factor's
(unpermuted) input to a per-program scratch ``(P, K, rows, N)``, then the factors are undone last to first,
recomputing ``h2 = C(z_k ⊙ a_k)`` from ``z_k``. Per-program partial sums of ``∂L/∂a, ∂L/∂d, ∂L/∂b`` go to a
``(P, K, N)`` fp32 buffer summed on the host. Only the input rows are saved for backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime.errors import OutOfResources

from surgeon.kernels import acdc_staged
from surgeon.kernels.common import (
    ACT_CODES,
    DENSE_MAX_N,
    DENSE_ROWS,
    MAX_N,
    MIN_N,
    accumulate,
    act_fwd,
    act_slope,
    check_device,
    dct_tables,
    dot_precision,
    launch_key,
    load_square,
    num_programs,
    num_warps,
    split,
    supported,
    tile_meta,
)

INTERPRET = bool(knobs.runtime.interpret)
__all__ = ["ACT_CODES", "DENSE_MAX_N", "DENSE_ROWS", "MAX_N", "MIN_N", "acdc_cascade_backward",
           "acdc_cascade_forward", "dct_tables", "split", "supported"]


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def _layout(N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr):
    """Per tile slot: local row, sample index (Makhoul order for split tiles) and frequency index."""
    i = tl.arange(0, R)[:, None]
    j = tl.arange(0, C)[None, :]
    if DENSE:
        lrow = i + 0 * j
        scol = j + 0 * i
        fcol = scol
    else:
        m = i * C + j
        lrow = m * 0
        scol = tl.where(m < N // 2, 2 * m, 2 * N - 1 - 2 * m)
        fcol = i + R * j
    return lrow, scol, fcol


@triton.jit
def _load_tables(f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                 N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr):
    if DENSE:
        f1r = load_square(f1r_ptr, N)
        f2r = load_square(f2r_ptr, N)
        f1i = f1r
        twr = f1r
        twi = f1r
        f2i = f2r
        pr = f1r
        pi = f1r
    else:
        f1r = load_square(f1r_ptr, R)
        f1i = load_square(f1i_ptr, R)
        f2r = load_square(f2r_ptr, C)
        f2i = load_square(f2i_ptr, C)
        rc = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
        twr = tl.load(twr_ptr + rc)
        twi = tl.load(twi_ptr + rc)
        pr = tl.load(pr_ptr + rc)
        pi = tl.load(pi_ptr + rc)
    return f1r, f1i, twr, twi, f2r, f2i, pr, pi


@triton.jit
def _dct2(v, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE: tl.constexpr, PREC: tl.constexpr):
    """Sample tile -> frequency tile (orthonormal DCT-II of every row held in the tile)."""
    if DENSE:
        out = tl.dot(v, f1r, input_precision=PREC)
    else:
        ar = tl.dot(f1r, v, input_precision=PREC)
        ai = tl.dot(f1i, v, input_precision=PREC)
        br = ar * twr - ai * twi
        bi = ar * twi + ai * twr
        xr = tl.dot(br, f2r, input_precision=PREC) - tl.dot(bi, f2i, input_precision=PREC)
        xi = tl.dot(br, f2i, input_precision=PREC) + tl.dot(bi, f2r, input_precision=PREC)
        out = xr * pr - xi * pi
    return out


@triton.jit
def _dct3(h, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE: tl.constexpr, PREC: tl.constexpr):
    """Frequency tile -> sample tile (orthonormal DCT-III, the inverse and adjoint of :func:`_dct2`)."""
    if DENSE:
        out = tl.dot(h, f2r, input_precision=PREC)
    else:
        ur = h * pr
        ui = -h * pi
        br = tl.dot(ur, f2r, input_precision=PREC) + tl.dot(ui, f2i, input_precision=PREC)
        bi = tl.dot(ui, f2r, input_precision=PREC) - tl.dot(ur, f2i, input_precision=PREC)
        cr = br * twr + bi * twi
        ci = bi * twr - br * twi
        out = tl.dot(f1r, cr, input_precision=PREC) + tl.dot(f1i, ci, input_precision=PREC)
    return out


@triton.jit
def _acdc_fwd_kernel(x_ptr, y_ptr, scr_ptr, a_ptr, d_ptr, b_ptr, perm_ptr,
                     f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                     M, K, n_tiles, n_progs,
                     N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    ROWS: tl.constexpr = R if DENSE else 1
    lrow, scol, fcol = _layout(N, R, C, DENSE)
    f1r, f1i, twr, twi, f2r, f2i, pr, pi = _load_tables(f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr,
                                                        pr_ptr, pi_ptr, N, R, C, DENSE)
    scr = scr_ptr + pid * (ROWS * N) + lrow * N
    for tile in range(pid, n_tiles, n_progs):
        row = tile * ROWS + lrow
        rmask = row < M
        offs = row.to(tl.int64) * N + scol
        z = tl.load(x_ptr + offs, mask=rmask, other=0.0).to(tl.float32)
        for k in range(K):
            a = tl.load(a_ptr + k * N + scol)
            h = _dct2(z * a, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            h = h * tl.load(d_ptr + k * N + fcol)
            if HAS_BIAS:
                h = h + tl.load(b_ptr + k * N + fcol)
            y = _dct3(h, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            if k < K - 1:
                y = act_fwd(y, ACT)
                if HAS_PERM:
                    tl.store(scr + scol, y)
                    tl.debug_barrier()
                    y = tl.load(scr + tl.load(perm_ptr + k * N + scol))
                    tl.debug_barrier()
            z = y
        tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _acdc_bwd_kernel(x_ptr, g_ptr, dx_ptr, zbuf_ptr, gscr_ptr, ga_ptr, gd_ptr, gb_ptr,
                     a_ptr, d_ptr, perm_ptr, b_ptr,
                     f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                     M, K, n_tiles, n_progs,
                     N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    ROWS: tl.constexpr = R if DENSE else 1
    lrow, scol, fcol = _layout(N, R, C, DENSE)
    f1r, f1i, twr, twi, f2r, f2i, pr, pi = _load_tables(f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr,
                                                        pr_ptr, pi_ptr, N, R, C, DENSE)
    zb = zbuf_ptr + pid * (K * ROWS * N) + lrow * N
    gs = gscr_ptr + pid * (ROWS * N) + lrow * N
    part = pid * K * N
    vec = tl.arange(0, C)
    for tile in range(pid, n_tiles, n_progs):
        row = tile * ROWS + lrow
        rmask = row < M
        offs = row.to(tl.int64) * N + scol
        x = tl.load(x_ptr + offs, mask=rmask, other=0.0).to(tl.float32)
        # Forward sweep: keep act(y_k) (unpermuted) as the input of factor k+1.
        z = x
        for k in range(K - 1):
            h = _dct2(z * tl.load(a_ptr + k * N + scol), f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            h = h * tl.load(d_ptr + k * N + fcol)
            if HAS_BIAS:
                h = h + tl.load(b_ptr + k * N + fcol)
            y = act_fwd(_dct3(h, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC), ACT)
            tl.store(zb + (k + 1) * (ROWS * N) + scol, y)
            if HAS_PERM:
                tl.debug_barrier()
                y = tl.load(zb + (k + 1) * (ROWS * N) + tl.load(perm_ptr + k * N + scol))
            z = y
        tl.debug_barrier()
        g = tl.load(g_ptr + offs, mask=rmask, other=0.0).to(tl.float32)
        for kk in range(K):
            k = K - 1 - kk
            if k > 0:
                if HAS_PERM:  # noqa: SIM108 (constexpr branch, kept explicit for Triton)
                    idx = tl.load(perm_ptr + (k - 1) * N + scol)
                else:
                    idx = scol
                z = tl.load(zb + k * (ROWS * N) + idx)
            else:
                z = x
            a = tl.load(a_ptr + k * N + scol)
            h2 = _dct2(z * a, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            g3 = _dct2(g, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            g1 = _dct3(g3 * tl.load(d_ptr + k * N + fcol), f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC)
            base = part + k * N
            if DENSE:
                # Padding rows carry g = 0, so they add nothing to the column sums.
                accumulate(ga_ptr + base + vec, tl.sum(z * g1, axis=0))
                accumulate(gd_ptr + base + vec, tl.sum(h2 * g3, axis=0))
                if HAS_BIAS:
                    accumulate(gb_ptr + base + vec, tl.sum(g3, axis=0))
            else:
                accumulate(ga_ptr + base + scol, z * g1)
                accumulate(gd_ptr + base + fcol, h2 * g3)
                if HAS_BIAS:
                    accumulate(gb_ptr + base + fcol, g3)
            g = g1 * a
            if k > 0:
                g = g * act_slope(z, ACT)
                if HAS_PERM:
                    # z_k[i] = act(y)[perm[i]]: the gradient of y[perm[i]] is the permuted-back g[i].
                    tl.debug_barrier()
                    tl.store(gs + tl.load(perm_ptr + (k - 1) * N + scol), g)
                    tl.debug_barrier()
                    g = tl.load(gs + scol)
        tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=rmask)
        tl.debug_barrier()


# ------------------------------------------------------------------------------------------------- host code


# Register-tile launches that found too little shared memory: (pass, *launch_key).
_NO_ROOM: set[tuple[str, int, str, torch.dtype, str]] = set()
T = TypeVar("T")


def _prepare(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
             perms: torch.Tensor | None, activation: str):
    n = x.shape[-1]
    if not supported(n, x.dtype):
        raise ValueError(f"the Triton ACDC kernels need a power-of-two size in [{MIN_N}, {MAX_N}] and fp32/bf16/"
                         f"fp16; got N={n}, {x.dtype}")
    if activation not in ACT_CODES:
        raise ValueError(f"unknown activation {activation!r}")
    check_device(x)
    f32 = {"device": x.device, "dtype": torch.float32}
    a32, d32 = a.to(**f32).contiguous(), d.to(**f32).contiguous()
    b32 = None if b is None else b.to(**f32).contiguous()
    p32 = None if perms is None or a.shape[0] < 2 else perms.to(device=x.device, dtype=torch.int32).contiguous()
    consts = {"N": n, "HAS_BIAS": b is not None, "HAS_PERM": p32 is not None, "ACT": ACT_CODES[activation],
              "PREC": dot_precision(x.dtype)}
    # Unused pointer arguments still need a tensor; the constexpr flags keep the kernels from reading it.
    return a32, d32, a32 if b32 is None else b32, a32 if p32 is None else p32, consts


def _run_staged(pass_: str, x: torch.Tensor, staged: bool | None) -> bool:
    n = x.shape[-1]
    if staged is None:
        return n >= acdc_staged.STAGED_MIN_N or (pass_, *launch_key(x)) in _NO_ROOM
    return staged


def _launch(pass_: str, x: torch.Tensor, staged: bool | None, tiles: Callable[[], T], stages: Callable[[], T]) -> T:
    """Run the register-tile kernel, or the staged one when asked, when N is too large, or when it has no room."""
    if not _run_staged(pass_, x, staged):
        try:
            return tiles()
        except OutOfResources:  # raised before anything runs, so nothing is half written
            if staged is not None:
                raise
            _NO_ROOM.add((pass_, *launch_key(x)))
    return stages()


def acdc_cascade_forward(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                         perms: torch.Tensor | None, activation: str, staged: bool | None = None) -> torch.Tensor:
    """Fused cascade forward: x (M, N); a, d, b (K, N); perms (K-1, N) or None -> (M, N) in ``x.dtype``.

    ``staged`` forces (True) or forbids (False) :mod:`surgeon.kernels.acdc_staged`; by default it runs for
    N ≥ 16384 and wherever the register-tile kernel does not fit the device's shared memory.
    """
    x = x.contiguous()
    m, n = x.shape
    a32, d32, bias, perm, consts = _prepare(x, a, d, b, perms, activation)
    y = torch.empty_like(x)
    if m == 0:
        return y
    depth = a32.shape[0]
    tables = dct_tables(n, x.device)
    f32 = {"device": x.device, "dtype": torch.float32}

    def tiles() -> None:
        meta = tile_meta(n)
        rows = meta["R"] if meta["DENSE"] else 1
        n_tiles = triton.cdiv(m, rows)
        progs = num_programs(n_tiles, x.device, rows * n * 4)
        scratch = torch.empty((progs, rows * n) if consts["HAS_PERM"] else (1,), **f32)
        _acdc_fwd_kernel[(progs,)](x, y, scratch, a32, d32, bias, perm, *tables, m, depth, n_tiles, progs,
                                   num_warps=num_warps(n), **meta, **consts)

    def stages() -> None:
        progs = num_programs(m, x.device, 4 * n * 4, per_sm=1)
        scratch = torch.empty((progs, 4 * n), **f32)
        acdc_staged._acdc_fwd_staged_kernel[(progs,)](x, y, scratch, a32, d32, bias, perm, *tables, m, depth, progs,
                                                      num_warps=num_warps(n), num_stages=acdc_staged.NUM_STAGES,
                                                      **acdc_staged.staged_meta(n), **consts)

    _launch("fwd", x, staged, tiles, stages)
    return y


def acdc_cascade_backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                          b: torch.Tensor | None, perms: torch.Tensor | None, activation: str,
                          staged: bool | None = None):
    """Fused cascade backward, recomputing from ``x``: returns ``(dx, da, dd, db)``, shapes (M, N), (K, N) x 3.

    ``dx`` has ``x.dtype``; parameter gradients the parameters' dtypes; ``db`` is None without a bias.
    ``staged`` as in :func:`acdc_cascade_forward`.
    """
    x, grad = x.contiguous(), grad.contiguous()
    m, n = x.shape
    depth = a.shape[0]
    a32, d32, bias, perm, consts = _prepare(x, a, d, b, perms, activation)
    tables = dct_tables(n, x.device)
    f32 = {"device": x.device, "dtype": torch.float32}
    dx = torch.empty_like(x)

    def tiles() -> torch.Tensor:
        meta = tile_meta(n)
        rows = meta["R"] if meta["DENSE"] else 1
        n_tiles = max(triton.cdiv(m, rows), 1)
        progs = num_programs(n_tiles, x.device, (3 * depth * n + depth * rows * n + rows * n) * 4)
        parts = torch.zeros((3, progs, depth, n), **f32)
        zbuf = torch.empty((progs, depth, rows, n) if depth > 1 else (1,), **f32)
        gscr = torch.empty((progs, rows, n) if consts["HAS_PERM"] else (1,), **f32)
        _acdc_bwd_kernel[(progs,)](x, grad, dx, zbuf, gscr, parts[0], parts[1], parts[2], a32, d32, perm, bias,
                                   *tables, m, depth, n_tiles, progs, num_warps=num_warps(n), **meta, **consts)
        return parts

    def stages() -> torch.Tensor:
        progs = num_programs(m, x.device, (3 * depth * n + depth * n + 6 * n) * 4, per_sm=1)
        parts = torch.zeros((3, progs, depth, n), **f32)
        zbuf = torch.empty((progs, depth, n), **f32)
        scratch = torch.empty((progs, 6 * n), **f32)
        acdc_staged._acdc_bwd_staged_kernel[(progs,)](
            x, grad, dx, zbuf, scratch, parts[0], parts[1], parts[2], a32, d32, perm, bias, *tables, m, depth,
            progs, num_warps=num_warps(n), num_stages=acdc_staged.NUM_STAGES, **acdc_staged.staged_meta(n), **consts)
        return parts

    parts = _launch("bwd", x, staged, tiles, stages) if m > 0 else torch.zeros((3, 1, depth, n), **f32)
    sums = parts.sum(1)
    db = None if b is None else sums[2].to(b.dtype, copy=True)
    return dx, sums[0].to(a.dtype, copy=True), sums[1].to(d.dtype, copy=True), db

