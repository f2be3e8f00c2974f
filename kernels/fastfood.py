"""Fused Triton kernels for the Fastfood transform ``y = S Ĥ G Π Ĥ B x`` (thesis §3.9, eq. 3.9; grads eq. 3.13).

``Ĥ = H/√d`` with Sylvester ordering, so ``H_d = H_R ⊗ H_C`` for ``d = R·C``: holding a row as the tile
``T[i, j] = x[C·i + j]``, ``x H_d`` is the tile ``H_R @ T @ H_C`` in the same layout — two small ``tl.dot`` per
Hadamard, ``O(d·(R + C))`` work, and no reordering. For d ≤ 128 a 16-row tile is multiplied by the dense H_d.

One program runs every stacked block of a row tile: ``B``, ``Ĥ``, ``Π``, ``G``, ``Ĥ``, ``S`` in registers except
the permutation, which goes through a per-program fp32 scratch row (L2-resident, ``P × d`` floats). The backward
kernel recomputes ``Ĥ B x`` and ``Ĥ G Π Ĥ B x`` from the saved input (nothing else is saved), accumulates
``∂L/∂x`` over the blocks on chip and writes per-program partial sums of ``∂L/∂S, ∂L/∂G, ∂L/∂B``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton import knobs

from surgeon.kernels.common import (
    accumulate,
    check_device,
    dot_precision,
    num_programs,
    num_warps,
    split,
    supported,
    tile_meta,
)
from surgeon.primitives import hadamard_matrix

INTERPRET = bool(knobs.runtime.interpret)


@functools.lru_cache(maxsize=32)
def _tables_cpu(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    dense, r, c = split(n)
    if dense:
        return hadamard_matrix(n, dtype=torch.float32), torch.zeros(1)
    return hadamard_matrix(r, dtype=torch.float32), hadamard_matrix(c, dtype=torch.float32)


_TABLES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def hadamard_tables(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised ``(H_R, H_C)`` factors (dense sizes: ``(H_n, -)``) as fp32 on ``device``."""
    key = (n, str(device))
    if key not in _TABLES:
        _TABLES[key] = tuple(t.to(device) for t in _tables_cpu(n))
    return _TABLES[key]


@triton.jit
def _hadamard(t, h1, h2, DENSE: tl.constexpr, PREC: tl.constexpr):
    if DENSE:
        out = tl.dot(t, h1, input_precision=PREC)
    else:
        out = tl.dot(tl.dot(h1, t, input_precision=PREC), h2, input_precision=PREC)
    return out


@triton.jit
def _ff_layout(N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr):
    i = tl.arange(0, R)[:, None]
    j = tl.arange(0, C)[None, :]
    if DENSE:
        lrow = i + 0 * j
        col = j + 0 * i
    else:
        col = i * C + j
        lrow = col * 0
    return lrow, col


@triton.jit
def _ff_tables(h1_ptr, h2_ptr, N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr):
    if DENSE:
        o = tl.arange(0, N)
        h1 = tl.load(h1_ptr + o[:, None] * N + o[None, :])
        h2 = h1
    else:
        o1 = tl.arange(0, R)
        o2 = tl.arange(0, C)
        h1 = tl.load(h1_ptr + o1[:, None] * R + o1[None, :])
        h2 = tl.load(h2_ptr + o2[:, None] * C + o2[None, :])
    return h1, h2


@triton.jit
def _fastfood_fwd_kernel(x_ptr, y_ptr, scr_ptr, s_ptr, g_ptr, b_ptr, perm_ptr, h1_ptr, h2_ptr,
                         M, NB, n_tiles, n_progs, inv_norm,
                         N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr,
                         PREC: tl.constexpr):
    pid = tl.program_id(0)
    ROWS: tl.constexpr = R if DENSE else 1
    lrow, col = _ff_layout(N, R, C, DENSE)
    h1, h2 = _ff_tables(h1_ptr, h2_ptr, N, R, C, DENSE)
    scr = scr_ptr + pid * (ROWS * N) + lrow * N
    for tile in range(pid, n_tiles, n_progs):
        row = (tile * ROWS + lrow).to(tl.int64)
        rmask = row < M
        x = tl.load(x_ptr + row * N + col, mask=rmask, other=0.0).to(tl.float32)
        for blk in range(NB):
            p = blk * N + col
            u = _hadamard(x * tl.load(b_ptr + p), h1, h2, DENSE, PREC) * inv_norm
            tl.store(scr + col, u)
            tl.debug_barrier()
            w = tl.load(scr + tl.load(perm_ptr + p))
            tl.debug_barrier()
            q = _hadamard(w * tl.load(g_ptr + p), h1, h2, DENSE, PREC) * (inv_norm * tl.load(s_ptr + p))
            tl.store(y_ptr + row * (NB * N) + p, q.to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _fastfood_bwd_kernel(x_ptr, gy_ptr, dx_ptr, scr_ptr, gs_ptr, gg_ptr, gb_ptr,
                         s_ptr, g_ptr, b_ptr, perm_ptr, h1_ptr, h2_ptr,
                         M, NB, n_tiles, n_progs, inv_norm,
                         N: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DENSE: tl.constexpr,
                         PREC: tl.constexpr):
    pid = tl.program_id(0)
    ROWS: tl.constexpr = R if DENSE else 1
    lrow, col = _ff_layout(N, R, C, DENSE)
    h1, h2 = _ff_tables(h1_ptr, h2_ptr, N, R, C, DENSE)
    scr = scr_ptr + pid * (ROWS * N) + lrow * N
    part = pid * NB * N
    vec = tl.arange(0, C)
    for tile in range(pid, n_tiles, n_progs):
        row = (tile * ROWS + lrow).to(tl.int64)
        rmask = row < M
        x = tl.load(x_ptr + row * N + col, mask=rmask, other=0.0).to(tl.float32)
        dx = x * 0.0
        for blk in range(NB):
            p = blk * N + col
            bb = tl.load(b_ptr + p)
            gg = tl.load(g_ptr + p)
            perm = tl.load(perm_ptr + p)
            u = _hadamard(x * bb, h1, h2, DENSE, PREC) * inv_norm
            tl.store(scr + col, u)
            tl.debug_barrier()
            w = tl.load(scr + perm)
            q = _hadamard(w * gg, h1, h2, DENSE, PREC) * inv_norm
            gy = tl.load(gy_ptr + row * (NB * N) + p, mask=rmask, other=0.0).to(tl.float32)
            gw = _hadamard(gy * tl.load(s_ptr + p), h1, h2, DENSE, PREC) * inv_norm
            if DENSE:
                accumulate(gs_ptr + part + blk * N + vec, tl.sum(gy * q, axis=0))
                accumulate(gg_ptr + part + blk * N + vec, tl.sum(gw * w, axis=0))
            else:
                accumulate(gs_ptr + part + p, gy * q)
                accumulate(gg_ptr + part + p, gw * w)
            # (Π u)[i] = u[perm[i]], so Πᵀ scatters the gradient back through the same indices.
            tl.debug_barrier()
            tl.store(scr + perm, gw * gg)
            tl.debug_barrier()
            gv = _hadamard(tl.load(scr + col), h1, h2, DENSE, PREC) * inv_norm
            if DENSE:
                accumulate(gb_ptr + part + blk * N + vec, tl.sum(gv * x, axis=0))
            else:
                accumulate(gb_ptr + part + p, gv * x)
            dx += gv * bb
            tl.debug_barrier()
        tl.store(dx_ptr + row * N + col, dx.to(dx_ptr.dtype.element_ty), mask=rmask)


def _prepare(x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor, binary: torch.Tensor, perm: torch.Tensor):
    n = x.shape[-1]
    if not supported(n, x.dtype):
        raise ValueError(f"the Triton Fastfood kernels need a power-of-two d in [16, 16384] and fp32/bf16/fp16; "
                         f"got d={n}, {x.dtype}")
    check_device(x)
    f32 = {"device": x.device, "dtype": torch.float32}
    params = [t.to(**f32).contiguous() for t in (scale, gauss, binary)]
    perm32 = perm.to(device=x.device, dtype=torch.int32).contiguous()
    consts = {"N": n, "PREC": dot_precision(x.dtype), **tile_meta(n)}
    return params, perm32, consts


def fastfood_forward(x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor, binary: torch.Tensor,
                     perm: torch.Tensor) -> torch.Tensor:
    """Fused forward: x (M, d); scale, gauss, binary, perm (blocks, d) -> (M, blocks·d) in ``x.dtype``."""
    x = x.contiguous()
    m, n = x.shape
    (s32, g32, b32), perm32, consts = _prepare(x, scale, gauss, binary, perm)
    blocks = s32.shape[0]
    y = torch.empty((m, blocks * n), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    rows = consts["R"] if consts["DENSE"] else 1
    n_tiles = triton.cdiv(m, rows)
    progs = num_programs(n_tiles, x.device, rows * n * 4)
    scratch = torch.empty((progs, rows * n), device=x.device, dtype=torch.float32)
    _fastfood_fwd_kernel[(progs,)](x, y, scratch, s32, g32, b32, perm32, *hadamard_tables(n, x.device),
                                   m, blocks, n_tiles, progs, float(n) ** -0.5, num_warps=num_warps(n), **consts)
    return y


def fastfood_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor,
                      binary: torch.Tensor, perm: torch.Tensor):
    """Fused backward recomputing from ``x``: returns ``(dx, dscale, dgauss, dbinary)`` in the inputs' dtypes."""
    x, grad = x.contiguous(), grad.contiguous()
    m, n = x.shape
    (s32, g32, b32), perm32, consts = _prepare(x, scale, gauss, binary, perm)
    blocks = s32.shape[0]
    rows = consts["R"] if consts["DENSE"] else 1
    n_tiles = max(triton.cdiv(m, rows), 1)
    progs = num_programs(n_tiles, x.device, (3 * blocks * n + rows * n) * 4)
    parts = torch.zeros((3, progs, blocks, n), device=x.device, dtype=torch.float32)
    scratch = torch.empty((progs, rows * n), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    if m > 0:
        _fastfood_bwd_kernel[(progs,)](x, grad, dx, scratch, parts[0], parts[1], parts[2], s32, g32, b32, perm32,
                                       *hadamard_tables(n, x.device), m, blocks, n_tiles, progs, float(n) ** -0.5,
                                       num_warps=num_warps(n), **consts)
    sums = parts.sum(1)
    return (dx, sums[0].to(scale.dtype, copy=True), sums[1].to(gauss.dtype, copy=True),
            sums[2].to(binary.dtype, copy=True))

