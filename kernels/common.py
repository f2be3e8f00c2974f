"""What every surgeon Triton kernel shares: size rules, constant tables, activations and launch sizing.

The DCT and Hadamard kernels hold a row of size N as a register tile. ``split`` picks its shape: small rows
(N ≤ 128) are stacked 16 to a tile and multiplied by the dense N x N matrix; larger rows become one
``N1 x N2`` tile (``N1 = 2^ceil(log2(N)/2)``) so that a length-N transform is two rounds of small ``tl.dot``
(Cooley–Tukey for the DFT, a Kronecker product for the Hadamard transform).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from triton import knobs

from surgeon.primitives import ACTIVATIONS, KERNEL_DTYPES, KERNEL_MAX_N, KERNEL_MIN_N, dct_matrix, kernel_supported
from surgeon.primitives.activations import LEAKY_SLOPE

INTERPRET = bool(knobs.runtime.interpret)
ACT_CODES = {name: spec.code for name, spec in ACTIVATIONS.items()}  # the ``ACT`` constexpr of act_fwd/act_slope
MIN_N, MAX_N = KERNEL_MIN_N, KERNEL_MAX_N
DENSE_MAX_N = 128
DENSE_ROWS = 16
SCRATCH_BUDGET = 256 * 2**20  # bytes of per-program scratch + partial gradients in a backward pass
DTYPES = KERNEL_DTYPES
supported = kernel_supported  # the one support rule, shared with the dispatcher (surgeon.primitives.support)
_LEAKY = tl.constexpr(LEAKY_SLOPE)


def split(n: int) -> tuple[bool, int, int]:
    """``(dense, R, C)``: the register tile is R x C; dense tiles hold R rows of C = n samples."""
    if n <= DENSE_MAX_N:
        return True, DENSE_ROWS, n
    n1 = 1 << ((n.bit_length() - 1 + 1) // 2)
    return False, n1, n // n1


def tile_meta(n: int) -> dict[str, object]:
    """Shape constexprs ``R``, ``C``, ``DENSE`` of the register-tile kernels for rows of size ``n``."""
    dense, r, c = split(n)
    return {"R": r, "C": c, "DENSE": dense}


FP32_DOT_ENV = "SURGEON_FP32_DOT"
FP32_DOTS = ("ieee", "tf32x3", "tf32")


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: TF32 tensor cores for 16-bit I/O; for fp32 I/O ``$SURGEON_FP32_DOT``.

    fp32 defaults to ``"ieee"`` (exact fp32 FMA products). ``"tf32x3"`` runs each product as three TF32
    tensor-core products (operands split into high and low TF32 parts), about as accurate as fp32: compiled for
    sm_90 it spills far less at 1024 ≤ N ≤ 4096 (see ``surgeon bench --resources``); which is faster is for a
    GPU benchmark to say. ``"tf32"`` trades fp32 accuracy (≈1e-3) for speed.
    """
    if dtype != torch.float32:
        return "tf32"
    choice = os.environ.get(FP32_DOT_ENV, "ieee").strip().lower() or "ieee"
    if choice not in FP32_DOTS:
        raise ValueError(f"{FP32_DOT_ENV} must be one of {', '.join(FP32_DOTS)}; got {choice!r}")
    return choice


@functools.lru_cache(maxsize=32)
def _dct_tables_cpu(n: int) -> tuple[torch.Tensor, ...]:
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


_DCT_TABLES: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}


def dct_tables(n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """fp32 constants ``(F1r, F1i, Wr, Wi, F2r, F2i, Pr, Pi)`` (dense: ``(Cᵀ, -, -, -, C, -, -, -)``) on ``device``."""
    key = (n, str(device))
    if key not in _DCT_TABLES:
        _DCT_TABLES[key] = tuple(t.to(device=device, dtype=torch.float32) for t in _dct_tables_cpu(n))
    return _DCT_TABLES[key]


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def act_fwd(y, ACT: tl.constexpr):
    # ACT is surgeon.primitives.ACTIVATIONS[name].code
    if ACT == 1:
        out = tl.maximum(y, 0.0)
    elif ACT == 2:
        out = tl.where(y > 0, y, y * _LEAKY)
    elif ACT == 3:
        out = 2.0 * tl.sigmoid(2.0 * y) - 1.0
    elif ACT == 4:
        out = tl.sigmoid(y)
    else:
        out = y
    return out


@triton.jit
def act_slope(out, ACT: tl.constexpr):
    # Written in terms of the activation's output, which is what the kernels keep.
    if ACT == 1:
        s = tl.where(out > 0, 1.0, 0.0)
    elif ACT == 2:
        s = tl.where(out > 0, 1.0, _LEAKY)
    elif ACT == 3:
        s = 1.0 - out * out
    elif ACT == 4:
        s = out * (1.0 - out)
    else:
        s = out * 0.0 + 1.0
    return s


@triton.jit
def load_square(ptr, S: tl.constexpr):
    o = tl.arange(0, S)
    return tl.load(ptr + o[:, None] * S + o[None, :])


@triton.jit
def accumulate(ptr, value):
    # The partial-gradient row belongs to this program alone, so a plain read-modify-write is race free.
    tl.store(ptr, tl.load(ptr) + value)


# ------------------------------------------------------------------------------------------------- host code


def check_device(x: torch.Tensor) -> None:
    """Raise unless ``x`` can be handed to a Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and INTERPRET:
        return
    if x.device.type == "cpu" and knobs.runtime.interpret:
        raise RuntimeError("surgeon.kernels was imported before TRITON_INTERPRET=1 was set; call "
                           "surgeon.kernels.ensure_mode() (the dispatcher does) before launching on CPU")
    raise RuntimeError(f"the Triton kernels need a CUDA tensor (got {x.device}); on CPU they run only "
                       "under the Triton interpreter, i.e. with TRITON_INTERPRET=1 set before importing triton")


def launch_key(x: torch.Tensor) -> tuple[int, str, torch.dtype, str]:
    """What decides whether a launch on ``x`` fits the GPU: ``(N, device name, dtype, dot precision)``."""
    name = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else x.device.type
    return x.shape[-1], name, x.dtype, dot_precision(x.dtype)


def num_programs(n_tiles: int, device: torch.device, per_program_bytes: int, per_sm: int = 2) -> int:
    """Persistent-grid size: ``per_sm`` programs per SM, fewer if their scratch would pass the budget."""
    # The interpreter runs programs one by one; a few still exercise the persistent loop.
    cap = per_sm * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    cap = min(cap, max(1, SCRATCH_BUDGET // max(per_program_bytes, 1)))
    return max(1, min(n_tiles, cap))


def num_warps(n: int) -> int:
    return 4 if n <= 1024 else 8 if n <= 4096 else 16
