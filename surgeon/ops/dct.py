"""Orthonormal DCT-II / DCT-III along the last dimension.

The matrix is thesis eq. 3.27, ``C[k, n] = sqrt(2/N) * eps_k * cos(pi * (2n + 1) * k / (2N))`` with
``eps_0 = 1/sqrt(2)`` and ``eps_k = 1`` otherwise. ``C`` is orthogonal, so the DCT-III is ``C^T = C^{-1}``
and the gradient of one transform is the other transform applied to the incoming gradient.

Two engines compute the same map:

* ``"scipy"`` — pocketfft through :mod:`scipy.fft`, on CPU tensors. On the reference machines it ran
  several times faster than any torch FFT formulation for batched real transforms.
* ``"torch"`` — Makhoul's reordering onto one complex FFT (``torch.fft``); runs on every device,
  under ``torch.compile`` and inside ONNX-free graphs.

``"auto"`` picks scipy for CPU tensors outside tracing/compilation, torch otherwise. Reduced precision
inputs (fp16/bf16) are transformed in fp32 and cast back.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import scipy.fft
import torch

from surgeon.ops.threads import pocketfft_workers
from surgeon.primitives import compute_dtype, dct_matrix

__all__ = ["dct", "dct_matrix", "idct", "resolve_engine", "transform_"]

Engine = Literal["auto", "scipy", "torch"]

_ENGINES = ("auto", "scipy", "torch")


def _scipy_usable(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.is_complex():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    # Fake / meta / functional tensors cannot be handed to numpy.
    return type(x) is torch.Tensor or isinstance(x, torch.nn.Parameter)


def resolve_engine(x: torch.Tensor, engine: Engine = "auto") -> str:
    """The engine that will run for ``x``: the argument, else ``SURGEON_DCT_ENGINE``, else automatic."""
    if engine == "auto":
        engine = os.environ.get("SURGEON_DCT_ENGINE", "auto")  # type: ignore[assignment]
    if engine not in _ENGINES:
        raise ValueError(f"unknown DCT engine {engine!r}; expected one of {', '.join(_ENGINES)}")
    if engine == "auto":
        return "scipy" if _scipy_usable(x) else "torch"
    if engine == "scipy" and not _scipy_usable(x):
        raise ValueError("the scipy DCT engine needs a plain CPU tensor outside tracing/compilation")
    return engine


def _workers() -> int:
    return pocketfft_workers() or max(1, torch.get_num_threads())


def _scipy_transform(x: torch.Tensor, kind: int) -> torch.Tensor:
    work = x.detach().to(compute_dtype(x.dtype)).contiguous()
    fn = scipy.fft.dct if kind == 2 else scipy.fft.idct
    private_copy = work.data_ptr() != x.data_ptr()
    out = fn(work.numpy(), type=2, norm="ortho", axis=-1, workers=_workers(), overwrite_x=private_copy)
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.dtype)


def transform_(buffer: torch.Tensor, kind: int) -> torch.Tensor:
    """DCT-II (``kind=2``) or DCT-III (``kind=3``) of ``buffer`` along the last dim, written into ``buffer``.

    For kernels that own their scratch memory: on CPU, pocketfft transforms in place, so a deep cascade reuses
    a couple of buffers instead of allocating (and page-faulting) a fresh one per transform. No autograd.

    Small N stays on pocketfft too: one GEMM against the dense matrix measured 2-3x faster per call at N <= 128
    on the reference machine, but it rounds differently, and converted checkpoints must keep reproducing their
    recorded outputs bit for bit (tests/test_io_legacy.py).
    """
    if buffer.shape[-1] == 0:
        return buffer
    if _scipy_usable(buffer) and buffer.is_contiguous() and buffer.dtype in (torch.float32, torch.float64):
        fn = scipy.fft.dct if kind == 2 else scipy.fft.idct
        array = buffer.detach().numpy()
        out = fn(array, type=2, norm="ortho", axis=-1, workers=_workers(), overwrite_x=True)
        if not np.shares_memory(out, array):
            buffer.copy_(torch.from_numpy(out))
        return buffer
    with torch.no_grad():
        return buffer.copy_(_torch_dct2(buffer) if kind == 2 else _torch_dct3(buffer))


def _phase(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """exp(-i pi k / 2N) for k < N, in the complex dtype matching ``dtype``."""
    k = torch.arange(n, device=device, dtype=dtype)
    return torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))


def _ortho_scale(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    scale = torch.full((n,), math.sqrt(2.0 / n), device=device, dtype=dtype)
    scale[0] = math.sqrt(1.0 / n)
    return scale


def _torch_dct2(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    work = x.to(compute_dtype(x.dtype))
    # Makhoul: even samples ascending, odd samples descending, then one length-N FFT.
    v = torch.cat([work[..., 0::2], work[..., 1::2].flip(-1)], dim=-1)
    spectrum = torch.fft.fft(v, dim=-1)
    y = (spectrum * _phase(n, x.device, work.dtype)).real * _ortho_scale(n, x.device, work.dtype)
    return y.to(x.dtype)


def _torch_dct3(y: torch.Tensor) -> torch.Tensor:
    n = y.shape[-1]
    work = y.to(compute_dtype(y.dtype)) / _ortho_scale(n, y.device, compute_dtype(y.dtype))
    # Undo Makhoul: rebuild the Hermitian spectrum V_k = (Y_k - i Y_{N-k}) e^{i pi k / 2N} / 2, Y_N = 0.
    reversed_tail = torch.cat([torch.zeros_like(work[..., :1]), work[..., 1:].flip(-1)], dim=-1)
    spectrum = torch.complex(work, -reversed_tail) * _phase(n, y.device, work.dtype).conj() / 2
    v = torch.fft.ifft(spectrum, dim=-1).real * 2
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[..., 0::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip(-1)
    return x.to(y.dtype)


class _OrthoDCT(torch.autograd.Function):
    """scipy DCT-II (kind 2) or DCT-III (kind 3); the gradient is the other kind (C is orthogonal).

    The torch engine needs no Function: autograd differentiates through ``torch.fft`` itself.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: int) -> torch.Tensor:
        ctx.kind = kind
        return _scipy_transform(x, kind)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _OrthoDCT.apply(grad.contiguous(), 5 - ctx.kind), None


def _ortho_transform(x: torch.Tensor, kind: int, engine: Engine) -> torch.Tensor:
    if x.shape[-1] == 0:
        return x.clone()
    if resolve_engine(x, engine) == "torch":
        return _torch_dct2(x) if kind == 2 else _torch_dct3(x)
    return _OrthoDCT.apply(x, kind)


def dct(x: torch.Tensor, engine: Engine = "auto") -> torch.Tensor:
    """Orthonormal DCT-II of ``x`` along the last dim: (..., N) -> (..., N); ``y = x C^T`` (eq. 3.27)."""
    return _ortho_transform(x, 2, engine)


def idct(y: torch.Tensor, engine: Engine = "auto") -> torch.Tensor:
    """Orthonormal DCT-III (inverse of :func:`dct`) along the last dim: (..., N) -> (..., N); ``x = y C``."""
    return _ortho_transform(y, 3, engine)

