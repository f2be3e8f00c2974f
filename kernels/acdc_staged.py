"""Staged ACDC cascade kernels for rows too large for one register tile (thesis §3.10, eqs. 3.24–3.32).

:mod:`surgeon.kernels.acdc` keeps a whole row on chip as an ``N1 x N2`` tile. At N = 16384 that tile's
``tl.dot`` operands need about 384 KiB of shared memory, more than any GPU offers a block (H100: 227 KiB), so
the launch would fail. Here the same Makhoul / Cooley–Tukey split (see that module) runs in *stages* over a
per-program fp32 scratch row, each stage touching only a slab of the tile:

* DCT-II, stage 1: column slabs ``T[:, j:j+CB]`` (gathered in Makhoul order, times ``a``) become
  ``W ⊙ (F1 @ T)``; stage 2: row slabs ``B[i:i+RB, :]`` become ``P ⊙ (B @ F2)``, written in frequency order.
* DCT-III runs the same slabs backwards: row slabs of ``(h ⊙ d + b) ⊙ P̄`` times ``conj(F2)`` and ``conj(W)``,
  then column slabs times ``conj(F1)``; the activation is applied as the samples are stored.

Every ``tl.dot`` is at most ``128 x 128 @ 128 x 32``, so shared memory and registers stay bounded whatever N.
Stages meet at ``tl.debug_barrier`` (the whole row belongs to one program). The scratch is
``P x (4 or 6) x N`` floats with P about one program per SM, small enough to stay in L2. The permutation between
factors costs nothing extra: the next factor's stage 1 gathers its input through it.

Backward mirrors :mod:`surgeon.kernels.acdc`: a forward sweep keeps each factor's unpermuted input, then the
factors are undone last to first recomputing ``h2 = C(z_k ⊙ a_k)``; nothing is divided by a diagonal.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

from surgeon.kernels.common import DENSE_MAX_N, accumulate, act_fwd, act_slope, load_square, split

INTERPRET = bool(knobs.runtime.interpret)
STAGED_MIN_N = 16384
SLAB = 32  # columns (stage 1) or rows (stage 2) of the N1 x N2 tile handled per step
ROW_CHUNK = 1024  # elements per step of the element-wise passes
# Software pipelining would multi-buffer the slab loads in shared memory (x5 at N = 16384, past any GPU's limit).
NUM_STAGES = 1


def staged_meta(n: int) -> dict[str, int]:
    """Shape constexprs for rows of size ``n``: the ``R x C`` tile, slab sizes ``CB``/``RB`` and chunk ``EB``."""
    dense, r, c = split(n)
    if dense:
        raise ValueError(f"the staged ACDC kernels need N > {DENSE_MAX_N}; got N={n}")
    return {"R": r, "C": c, "CB": min(c, SLAB), "RB": min(r, SLAB), "EB": min(n, ROW_CHUNK)}


@triton.jit
def _input_index(perm_ptr, s, k, N: tl.constexpr, HAS_PERM: tl.constexpr):
    """Where sample ``s`` of factor ``k``'s input sits in the previous factor's (unpermuted) output."""
    if HAS_PERM:
        previous = tl.load(perm_ptr + (k - 1) * N + s, mask=(s >= 0) & (k > 0), other=0)
        idx = tl.where(k > 0, previous, s)
    else:
        idx = s
    return idx


@triton.jit
def _staged_dct2(src, perm_ptr, k, mul_ptr, dst, tr, ti,
                 f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                 N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, CB: tl.constexpr, RB: tl.constexpr,
                 GATHER: tl.constexpr, MUL: tl.constexpr, PREC: tl.constexpr):
    """``dst[f] = DCT-II(z)[f]`` with ``z[s] = src[perm_{k-1}[s]]·mul[s]`` (gather and multiplier optional)."""
    rows = tl.arange(0, R)[:, None]
    for c0 in range(0, C, CB):
        slot = rows * C + c0 + tl.arange(0, CB)[None, :]
        s = tl.where(slot < N // 2, 2 * slot, 2 * N - 1 - 2 * slot)
        t = tl.load(src + _input_index(perm_ptr, s, k, N, GATHER))
        if MUL:
            t = t * tl.load(mul_ptr + s)
        ar = tl.dot(load_square(f1r_ptr, R), t, input_precision=PREC)
        ai = tl.dot(load_square(f1i_ptr, R), t, input_precision=PREC)
        wr = tl.load(twr_ptr + slot)
        wi = tl.load(twi_ptr + slot)
        tl.store(tr + slot, ar * wr - ai * wi)
        tl.store(ti + slot, ar * wi + ai * wr)
    tl.debug_barrier()
    cols = tl.arange(0, C)[None, :]
    for r0 in range(0, R, RB):
        k1 = r0 + tl.arange(0, RB)[:, None]
        slot = k1 * C + cols
        br = tl.load(tr + slot)
        bi = tl.load(ti + slot)
        f2r = load_square(f2r_ptr, C)
        f2i = load_square(f2i_ptr, C)
        xr = tl.dot(br, f2r, input_precision=PREC) - tl.dot(bi, f2i, input_precision=PREC)
        xi = tl.dot(br, f2i, input_precision=PREC) + tl.dot(bi, f2r, input_precision=PREC)
        tl.store(dst + k1 + R * cols, xr * tl.load(pr_ptr + slot) - xi * tl.load(pi_ptr + slot))
    tl.debug_barrier()


@triton.jit
def _staged_dct3(src, mul_ptr, add_ptr, dst, tr, ti,
                 f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                 N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, CB: tl.constexpr, RB: tl.constexpr,
                 MUL: tl.constexpr, ADD: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    """``dst[s] = act(DCT-III(h)[s])`` with ``h[f] = src[f]·mul[f] + add[f]``; stored in ``dst``'s dtype."""
    cols = tl.arange(0, C)[None, :]
    for r0 in range(0, R, RB):
        k1 = r0 + tl.arange(0, RB)[:, None]
        slot = k1 * C + cols
        freq = k1 + R * cols
        h = tl.load(src + freq)
        if MUL:
            h = h * tl.load(mul_ptr + freq)
        if ADD:
            h = h + tl.load(add_ptr + freq)
        ur = h * tl.load(pr_ptr + slot)
        ui = -h * tl.load(pi_ptr + slot)
        f2r = load_square(f2r_ptr, C)
        f2i = load_square(f2i_ptr, C)
        br = tl.dot(ur, f2r, input_precision=PREC) + tl.dot(ui, f2i, input_precision=PREC)
        bi = tl.dot(ui, f2r, input_precision=PREC) - tl.dot(ur, f2i, input_precision=PREC)
        wr = tl.load(twr_ptr + slot)
        wi = tl.load(twi_ptr + slot)
        tl.store(tr + slot, br * wr + bi * wi)
        tl.store(ti + slot, bi * wr - br * wi)
    tl.debug_barrier()
    rows = tl.arange(0, R)[:, None]
    for c0 in range(0, C, CB):
        slot = rows * C + c0 + tl.arange(0, CB)[None, :]
        out = (tl.dot(load_square(f1r_ptr, R), tl.load(tr + slot), input_precision=PREC)
               + tl.dot(load_square(f1i_ptr, R), tl.load(ti + slot), input_precision=PREC))
        s = tl.where(slot < N // 2, 2 * slot, 2 * N - 1 - 2 * slot)
        tl.store(dst + s, act_fwd(out, ACT).to(dst.dtype.element_ty))
    tl.debug_barrier()


@triton.jit
def _copy_row(src, dst, N: tl.constexpr, EB: tl.constexpr):
    for e0 in range(0, N, EB):
        i = e0 + tl.arange(0, EB)
        tl.store(dst + i, tl.load(src + i).to(tl.float32))
    tl.debug_barrier()


@triton.jit
def _acdc_fwd_staged_kernel(x_ptr, y_ptr, scr_ptr, a_ptr, d_ptr, b_ptr, perm_ptr,
                            f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                            M, K, n_progs,
                            N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, CB: tl.constexpr,
                            RB: tl.constexpr, EB: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr,
                            ACT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    zrow = scr_ptr + pid * (4 * N)
    hrow = zrow + N
    tr = zrow + 2 * N
    ti = zrow + 3 * N
    for row in range(pid, M, n_progs):
        offset = tl.cast(row, tl.int64) * N
        _copy_row(x_ptr + offset, zrow, N, EB)
        for k in range(K):
            _staged_dct2(zrow, perm_ptr, k, a_ptr + k * N, hrow, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, HAS_PERM, True, PREC)
            if k < K - 1:
                _staged_dct3(hrow, d_ptr + k * N, b_ptr + k * N, zrow, tr, ti,
                             f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                             N, R, C, CB, RB, True, HAS_BIAS, ACT, PREC)
            else:
                _staged_dct3(hrow, d_ptr + k * N, b_ptr + k * N, y_ptr + offset, tr, ti,
                             f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                             N, R, C, CB, RB, True, HAS_BIAS, 0, PREC)


@triton.jit
def _acdc_bwd_staged_kernel(x_ptr, g_ptr, dx_ptr, zbuf_ptr, scr_ptr, ga_ptr, gd_ptr, gb_ptr,
                            a_ptr, d_ptr, perm_ptr, b_ptr,
                            f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                            M, K, n_progs,
                            N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, CB: tl.constexpr,
                            RB: tl.constexpr, EB: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr,
                            ACT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    zb = zbuf_ptr + pid * (K * N)  # slot 0: x; slot k: act(y_{k-1}), unpermuted
    h2row = scr_ptr + pid * (6 * N)
    grow = h2row + N
    g3row = h2row + 2 * N
    g1row = h2row + 3 * N
    tr = h2row + 4 * N
    ti = h2row + 5 * N
    part = pid * K * N
    for row in range(pid, M, n_progs):
        offset = tl.cast(row, tl.int64) * N
        _copy_row(x_ptr + offset, zb, N, EB)
        for k in range(K - 1):
            _staged_dct2(zb + k * N, perm_ptr, k, a_ptr + k * N, h2row, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, HAS_PERM, True, PREC)
            _staged_dct3(h2row, d_ptr + k * N, b_ptr + k * N, zb + (k + 1) * N, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, True, HAS_BIAS, ACT, PREC)
        _copy_row(g_ptr + offset, grow, N, EB)
        for kk in range(K):
            k = K - 1 - kk
            zk = zb + k * N
            _staged_dct2(zk, perm_ptr, k, a_ptr + k * N, h2row, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, HAS_PERM, True, PREC)
            _staged_dct2(grow, perm_ptr, 0, a_ptr, g3row, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, False, False, PREC)
            _staged_dct3(g3row, d_ptr + k * N, b_ptr, g1row, tr, ti,
                         f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                         N, R, C, CB, RB, True, False, 0, PREC)
            base = part + k * N
            for e0 in range(0, N, EB):
                i = e0 + tl.arange(0, EB)
                idx = _input_index(perm_ptr, i, k, N, HAS_PERM)
                z = tl.load(zk + idx)
                g1 = tl.load(g1row + i)
                g3 = tl.load(g3row + i)
                accumulate(ga_ptr + base + i, z * g1)
                accumulate(gd_ptr + base + i, tl.load(h2row + i) * g3)
                if HAS_BIAS:
                    accumulate(gb_ptr + base + i, g3)
                g = g1 * tl.load(a_ptr + k * N + i)
                if k > 0:
                    # z_k[i] = act(y)[perm[i]]: the gradient of y[perm[i]] is g[i], scattered back.
                    tl.store(grow + idx, g * act_slope(z, ACT))
                else:
                    tl.store(dx_ptr + offset + i, g.to(dx_ptr.dtype.element_ty))
            tl.debug_barrier()
