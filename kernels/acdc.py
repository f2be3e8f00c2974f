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
file and Triton spills to local memory (L1/L2 backed): results stay correct, speed degrades.

Backward (eqs. 3.28–3.32, nothing divided by a diagonal) recomputes: a forward sweep writes each factor's
(unpermuted) input to a per-program scratch ``(P, K, rows, N)``, then the factors are undone last to first,
recomputing ``h2 = C(z_k ⊙ a_k)`` from ``z_k``. Per-program partial sums of ``∂L/∂a, ∂L/∂d, ∂L/∂b`` go to a
``(P, K, N)`` fp32 buffer summed on the host. Only the input rows are saved for backward.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton import knobs

from surgeon.ops.acdc import RecomputingCascade
from surgeon.ops.dct import dct_matrix

INTERPRET = bool(knobs.runtime.interpret)
ACT_CODES = {"none": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4}
MIN_N, MAX_N = 16, 16384
DENSE_MAX_N = 128
DENSE_ROWS = 16
_SCRATCH_BUDGET = 256 * 2**20  # bytes of per-program scratch + partial gradients in the backward pass
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supported(n: int, dtype: torch.dtype) -> bool:
    """Whether the kernels handle rows of size ``n`` in ``dtype`` (powers of two 16..16384, fp32/bf16/fp16)."""
    return MIN_N <= n <= MAX_N and n & (n - 1) == 0 and dtype in _DTYPES


def split(n: int) -> tuple[bool, int, int]:
    """``(dense, R, C)``: the register tile is R x C; dense tiles hold R rows of C = n samples."""
    if n <= DENSE_MAX_N:
        return True, DENSE_ROWS, n
    n1 = 1 << ((n.bit_length() - 1 + 1) // 2)
    return False, n1, n // n1


@functools.lru_cache(maxsize=32)
def _tables_cpu(n: int) -> tuple[torch.Tensor, ...]:
    dense, r, c = split(n)
    if dense:
        mat = dct_matrix(n, dtype=torch.float64)
        dummy = torch.zeros(1, dtype=torch.float64)
        return (mat.T.contiguous(), dummy, dummy, dummy, mat.contiguous(), dummy, dummy, dummy)
    two_pi = 2 * math.pi
    i1, i2 = torch.arange(r, dtype=torch.float64), torch.arange(c, dtype=torch.float64)
    f1 = torch.polar(torch.ones(r, r, dtype=torch.float64), -two_pi * torch.outer(i1, i1) / r)
    tw = torch.polar(torch.ones(r, c, dtype=torch.float64), -two_pi * torch.outer(i1, i2) / n)
    f2 = torch.polar(torch.ones(c, c, dtype=torch.float64), -two_pi * torch.outer(i2, i2) / c)
    k = i1[:, None] + r * i2[None, :]  # frequency of tile slot [k1, k2]
    scale = torch.full_like(k, math.sqrt(2.0 / n))
    scale[0, 0] = math.sqrt(1.0 / n)
    post = torch.polar(scale, -math.pi * k / (2 * n))
    return tuple(t.contiguous() for t in (f1.real, f1.imag, tw.real, tw.imag, f2.real, f2.imag,
                                          post.real, post.imag))


_TABLES: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}


def dct_tables(n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """fp32 constants ``(F1r, F1i, Wr, Wi, F2r, F2i, Pr, Pi)`` (dense: ``(Cᵀ, -, -, -, C, -, -, -)``) on ``device``."""
    key = (n, str(device))
    if key not in _TABLES:
        _TABLES[key] = tuple(t.to(device=device, dtype=torch.float32) for t in _tables_cpu(n))
    return _TABLES[key]


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def _act_fwd(y, ACT: tl.constexpr):
    if ACT == 1:
        out = tl.maximum(y, 0.0)
    elif ACT == 2:
        out = tl.where(y > 0, y, y * 0.01)
    elif ACT == 3:
        out = 2.0 * tl.sigmoid(2.0 * y) - 1.0
    elif ACT == 4:
        out = tl.sigmoid(y)
    else:
        out = y
    return out


@triton.jit
def _act_slope(out, ACT: tl.constexpr):
    # Written in terms of the activation's output, which is what the scratch keeps.
    if ACT == 1:
        s = tl.where(out > 0, 1.0, 0.0)
    elif ACT == 2:
        s = tl.where(out > 0, 1.0, 0.01)
    elif ACT == 3:
        s = 1.0 - out * out
    elif ACT == 4:
        s = out * (1.0 - out)
    else:
        s = out * 0.0 + 1.0
    return s


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
def _load_square(ptr, S: tl.constexpr):
    o = tl.arange(0, S)
    return tl.load(ptr + o[:, None] * S + o[None, :])


@triton.jit
def _load_tables(f1r_ptr, f1i_ptr, twr_ptr, twi_ptr, f2r_ptr, f2i_ptr, pr_ptr, pi_ptr,
                 N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr):
    if DENSE:
        f1r = _load_square(f1r_ptr, N)
        f2r = _load_square(f2r_ptr, N)
        f1i = f1r
        twr = f1r
        twi = f1r
        f2i = f2r
        pr = f1r
        pi = f1r
    else:
        f1r = _load_square(f1r_ptr, R)
        f1i = _load_square(f1i_ptr, R)
        f2r = _load_square(f2r_ptr, C)
        f2i = _load_square(f2i_ptr, C)
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
def _accumulate(ptr, value):
    # The partial-gradient row belongs to this program alone, so a plain read-modify-write is race free.
    tl.store(ptr, tl.load(ptr) + value)


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
                y = _act_fwd(y, ACT)
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
            y = _act_fwd(_dct3(h, f1r, f1i, twr, twi, f2r, f2i, pr, pi, DENSE, PREC), ACT)
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
                _accumulate(ga_ptr + base + vec, tl.sum(z * g1, axis=0))
                _accumulate(gd_ptr + base + vec, tl.sum(h2 * g3, axis=0))
                if HAS_BIAS:
                    _accumulate(gb_ptr + base + vec, tl.sum(g3, axis=0))
            else:
                _accumulate(ga_ptr + base + scol, z * g1)
                _accumulate(gd_ptr + base + fcol, h2 * g3)
                if HAS_BIAS:
                    _accumulate(gb_ptr + base + fcol, g3)
            g = g1 * a
            if k > 0:
                g = g * _act_slope(z, ACT)
                if HAS_PERM:
                    # z_k[i] = act(y)[perm[i]]: the gradient of y[perm[i]] is the permuted-back g[i].
                    tl.debug_barrier()
                    tl.store(gs + tl.load(perm_ptr + (k - 1) * N + scol), g)
                    tl.debug_barrier()
                    g = tl.load(gs + scol)
        tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=rmask)
        tl.debug_barrier()


# ------------------------------------------------------------------------------------------------- host code


def _check_device(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and INTERPRET:
        return
    if x.device.type == "cpu" and knobs.runtime.interpret:
        raise RuntimeError("surgeon.kernels was imported before TRITON_INTERPRET=1 was set; call "
                           "surgeon.kernels.ensure_mode() (the dispatcher does) before launching on CPU")
    raise RuntimeError(f"the Triton ACDC kernels need a CUDA tensor (got {x.device}); on CPU they run only "
                       "under the Triton interpreter, i.e. with TRITON_INTERPRET=1 set before importing triton")


def _num_programs(n_tiles: int, device: torch.device, per_program_bytes: int) -> int:
    # The interpreter runs programs one by one; a few still exercise the persistent loop.
    cap = 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    cap = min(cap, max(1, _SCRATCH_BUDGET // max(per_program_bytes, 1)))
    return max(1, min(n_tiles, cap))


def _num_warps(n: int) -> int:
    return 4 if n <= 1024 else 8 if n <= 4096 else 16


def _prepare(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
             perms: torch.Tensor | None, activation: str):
    n = x.shape[-1]
    if not supported(n, x.dtype):
        raise ValueError(f"the Triton ACDC kernels need a power-of-two size in [{MIN_N}, {MAX_N}] and fp32/bf16/"
                         f"fp16; got N={n}, {x.dtype}")
    if activation not in ACT_CODES:
        raise ValueError(f"unknown activation {activation!r}")
    _check_device(x)
    f32 = {"device": x.device, "dtype": torch.float32}
    a32, d32 = a.to(**f32).contiguous(), d.to(**f32).contiguous()
    b32 = None if b is None else b.to(**f32).contiguous()
    p32 = None if perms is None or a.shape[0] < 2 else perms.to(device=x.device, dtype=torch.int32).contiguous()
    dense, r, c = split(n)
    consts = {"N": n, "R": r, "C": c, "DENSE": dense, "HAS_BIAS": b is not None, "HAS_PERM": p32 is not None,
              "ACT": ACT_CODES[activation], "PREC": "ieee" if x.dtype == torch.float32 else "tf32"}
    return a32, d32, b32, p32, consts


def acdc_cascade_forward(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                         perms: torch.Tensor | None, activation: str) -> torch.Tensor:
    """Fused cascade forward: x (M, N); a, d, b (K, N); perms (K-1, N) or None -> (M, N) in ``x.dtype``."""
    x = x.contiguous()
    m, n = x.shape
    a32, d32, b32, p32, consts = _prepare(x, a, d, b, perms, activation)
    y = torch.empty_like(x)
    if m == 0:
        return y
    rows = consts["R"] if consts["DENSE"] else 1
    n_tiles = triton.cdiv(m, rows)
    progs = _num_programs(n_tiles, x.device, rows * n * 4)
    scratch = torch.empty((progs, rows * n) if p32 is not None else (1,), device=x.device, dtype=torch.float32)
    dummy = a32
    _acdc_fwd_kernel[(progs,)](x, y, scratch, a32, d32, dummy if b32 is None else b32, dummy if p32 is None else p32,
                               *dct_tables(n, x.device), m, a32.shape[0], n_tiles, progs,
                               num_warps=_num_warps(n), **consts)
    return y


def acdc_cascade_backward(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                          b: torch.Tensor | None, perms: torch.Tensor | None, activation: str):
    """Fused cascade backward, recomputing from ``x``: returns ``(dx, da, dd, db)``, shapes (M, N), (K, N) x 3.

    ``dx`` has ``x.dtype``; parameter gradients the parameters' dtypes; ``db`` is None without a bias.
    """
    x, grad = x.contiguous(), grad.contiguous()
    m, n = x.shape
    depth = a.shape[0]
    a32, d32, b32, p32, consts = _prepare(x, a, d, b, perms, activation)
    rows = consts["R"] if consts["DENSE"] else 1
    n_tiles = max(triton.cdiv(m, rows), 1)
    per_prog = (3 * depth * n + depth * rows * n + rows * n) * 4
    progs = _num_programs(n_tiles, x.device, per_prog)
    f32 = {"device": x.device, "dtype": torch.float32}
    parts = torch.zeros((3, progs, depth, n), **f32)
    zbuf = torch.empty((progs, depth, rows, n) if depth > 1 else (1,), **f32)
    gscr = torch.empty((progs, rows, n) if p32 is not None else (1,), **f32)
    dx = torch.empty_like(x)
    if m > 0:
        dummy = a32
        _acdc_bwd_kernel[(progs,)](x, grad, dx, zbuf, gscr, parts[0], parts[1], parts[2], a32, d32,
                                   dummy if p32 is None else p32, dummy if b32 is None else b32,
                                   *dct_tables(n, x.device), m, depth, n_tiles, progs,
                                   num_warps=_num_warps(n), **consts)
    sums = parts.sum(1)
    db = None if b is None else sums[2].to(b.dtype, copy=True)
    return dx, sums[0].to(a.dtype, copy=True), sums[1].to(d.dtype, copy=True), db


def acdc_cascade_triton(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                        perms: torch.Tensor | None, activation: str = "relu") -> torch.Tensor:
    """Differentiable fused cascade on x (..., N); a, d, b (K, N); perms (K-1, N) or None -> (..., N)."""
    n = x.shape[-1]
    out = RecomputingCascade.apply(x.reshape(-1, n), a, d, b, perms, activation, acdc_cascade_forward,
                                   acdc_cascade_backward)
    return out.reshape(x.shape)


def acdc_factor_triton(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                       b: torch.Tensor | None = None) -> torch.Tensor:
    """One fused factor ``Cᵀ(C(x ⊙ a) ⊙ d + b)``: x (..., N); a, d, b (N,) -> (..., N). Differentiable."""
    bias = None if b is None else b.unsqueeze(0)
    return acdc_cascade_triton(x, a.unsqueeze(0), d.unsqueeze(0), bias, None, "none")
