"""Orthonormal DCT-II / DCT-III along the last dimension.

The matrix is thesis eq. 3.27, ``C[k, n] = sqrt(2/N) * eps_k * cos(pi * (2n + 1) * k / (2N))`` with
``eps_0 = 1/sqrt(2)`` and ``eps_k = 1`` otherwise. ``C`` is orthogonal, so the DCT-III is ``C^T = C^{-1}``
and the gradient of one transform is the other transform applied to the incoming gradient.

Three engines compute the same map:

* ``"matmul"`` — one GEMM against the dense matrix ``C`` (cached per size, dtype and device). For small N the
  per-call overhead of an FFT library dominates and a GEMM is several times faster; :func:`matmul_wins` holds
  the crossover measured on the reference machine.
* ``"scipy"`` — pocketfft through :mod:`scipy.fft`, on CPU tensors. On the reference machines it ran
  several times faster than any torch FFT formulation for batched real transforms.
* ``"torch"`` — Makhoul's reordering onto one complex FFT (``torch.fft``); runs on every device,
  under ``torch.compile`` and inside ONNX-free graphs.

``"auto"`` picks, for plain CPU tensors outside tracing/compilation, matmul below the crossover and scipy above
it; torch otherwise. Reduced precision inputs (fp16/bf16) are transformed in fp32 and cast back. The engines
round differently (a few fp32 ulps), so outputs are reproducible bit for bit only under the same engine.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import scipy.fft
import torch

from surgeon.ops.threads import pocketfft_threads
from surgeon.primitives import compute_dtype, dct_matrix

__all__ = ["InPlaceDCT", "dct", "dct_engine_allows_matmul", "dct_matrix", "eager_cpu", "forced_engine", "idct",
           "matmul_wins", "resolve_engine", "transform_", "transform_matrix"]

Engine = Literal["auto", "matmul", "scipy", "torch"]

_ENGINES = ("auto", "matmul", "scipy", "torch")
ENV_VAR = "SURGEON_DCT_ENGINE"
MATMUL_MAX_N = 128            # above this a GEMM (N² per row) lost to pocketfft (N log N per row) at every row count
MATMUL_ALWAYS_N = 64          # at or below this it won at every row count measured (1 to 1024)
MATMUL_MAX_WORK = 2**18       # rows · N² multiply-adds under which a GEMM still beats pocketfft's ~10 µs call


def eager_cpu(x: torch.Tensor) -> bool:
    """A plain real CPU tensor outside compilation, tracing and ONNX export: numpy (scipy's engine) may see it, and
    Python-side choices (engines, caches) made on it are not baked into a graph."""
    if x.device.type != "cpu" or x.is_complex():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    # Fake / meta / functional tensors cannot be handed to numpy.
    return type(x) is torch.Tensor or isinstance(x, torch.nn.Parameter)


def matmul_wins(n: int, rows: int) -> bool:
    """Whether one GEMM against the dense DCT matrix beats pocketfft for ``rows`` transforms of size ``n``.

    Measured on the reference machine (2-core AMD EPYC, one torch thread as inside the cascade, pocketfft on two):
    a pocketfft call costs ~11 µs whatever the size up to N = 256, a GEMM ~1-3 µs plus rows·N² multiply-adds at
    ~40 G/s. The GEMM was 2-6x faster at N <= 64 for 1 to 1024 rows, won at N = 128 up to ~16 rows and at N = 256
    for single rows, and lost at N = 512 even for one row. Since small pocketfft calls run one thread
    (:func:`surgeon.ops.threads.pocketfft_threads`) N = 256 no longer wins anywhere: a depth-12 forward+backward
    on 1 / 256 rows took 2.5-3.2 / 16 ms through GEMMs against 1.1 / 11-13 ms through pocketfft.
    """
    return n <= MATMUL_ALWAYS_N or (n <= MATMUL_MAX_N and rows * n * n <= MATMUL_MAX_WORK)


def _requested(engine: str) -> str:
    if engine == "auto":
        engine = os.environ.get(ENV_VAR, "auto")
    if engine not in _ENGINES:
        raise ValueError(f"unknown DCT engine {engine!r}; expected one of {', '.join(_ENGINES)}")
    return engine


@contextlib.contextmanager
def forced_engine(engine: Engine) -> Iterator[None]:
    """Within the block, every transform (and the dense small-N cascade) follows ``engine`` as if
    ``SURGEON_DCT_ENGINE`` were set to it; benchmarks use it to time two engines in one run."""
    _requested(engine)
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = engine
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def dct_engine_allows_matmul() -> bool:
    """False when ``SURGEON_DCT_ENGINE`` forces scipy or torch: then no GEMM stands in for a transform anywhere
    (the dense small-N cascade included)."""
    return _requested("auto") in ("auto", "matmul")


def resolve_engine(x: torch.Tensor, engine: Engine = "auto", eager: bool | None = None) -> str:
    """The engine that will run for ``x``: the argument, else ``SURGEON_DCT_ENGINE``, else automatic.
    ``eager``: :func:`eager_cpu` of ``x`` when the caller already knows it."""
    engine = _requested(engine)  # type: ignore[assignment]
    eager = eager_cpu(x) if eager is None else eager
    if engine == "auto":
        if not eager:
            return "torch"
        n = x.shape[-1]
        return "matmul" if matmul_wins(n, x.numel() // max(n, 1)) else "scipy"
    if engine == "matmul" and x.is_complex():
        raise ValueError("the matmul DCT engine needs a real tensor")
    if engine == "scipy" and not eager:
        raise ValueError("the scipy DCT engine needs a plain CPU tensor outside tracing/compilation")
    return engine


try:  # scipy's binding of pocketfft (private): the public scipy.fft.dct adds ~30 µs of dispatch per call
    from scipy.fft._pocketfft import pypocketfft as _pypocketfft
except ImportError:  # pragma: no cover - another scipy layout
    _pypocketfft = None


def _binding_agrees() -> bool:
    """Whether the private binding, called as :class:`InPlaceDCT` calls it, transforms in place exactly like
    ``scipy.fft.dct`` / ``idct`` (norm="ortho") on a probe; else the cascade keeps to the public functions."""
    if _pypocketfft is None:
        return False
    probe = np.linspace(-1.0, 1.0, 24, dtype=np.float32).reshape(2, 12)
    try:
        for kind, public in ((2, scipy.fft.dct), (3, scipy.fft.idct)):
            work = probe.copy()
            out = _pypocketfft.dct(work, kind, (1,), 1, work, 1, None)
            if out is not work or not np.allclose(work, public(probe, type=2, norm="ortho", axis=-1), atol=1e-6):
                return False
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


_DIRECT_POCKETFFT = _binding_agrees()


def _scipy_transform(x: torch.Tensor, kind: int) -> torch.Tensor:
    work = x.detach().to(compute_dtype(x.dtype)).contiguous()
    fn = scipy.fft.dct if kind == 2 else scipy.fft.idct
    private_copy = work.data_ptr() != x.data_ptr()
    out = fn(work.numpy(), type=2, norm="ortho", axis=-1, workers=pocketfft_threads(work.numel()),
             overwrite_x=private_copy)
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.dtype)


_MATRICES: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def transform_matrix(n: int, kind: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The right factor of the transform as a row-vector product: ``Cᵀ`` for DCT-II (``y = x Cᵀ``), ``C`` for
    DCT-III; (N, N), contiguous, built once per (N, kind, dtype, device) from eq. 3.27 in float64."""
    key = (n, kind, dtype, torch.device(device))
    matrix = _MATRICES.get(key)
    if matrix is None:
        # A normal tensor even when first asked for under inference_mode: autograd may save it later.
        with torch.inference_mode(False), torch.no_grad():
            c = dct_matrix(n, torch.float64)
            matrix = (c.T if kind == 2 else c).contiguous().to(device=device, dtype=dtype)
        _MATRICES[key] = matrix
    return matrix


def _matmul_transform(x: torch.Tensor, kind: int) -> torch.Tensor:
    """``x Cᵀ`` or ``x C`` in the compute dtype, cast back; differentiable (a GEMM against a constant)."""
    work = x.to(compute_dtype(x.dtype))
    return torch.matmul(work, transform_matrix(x.shape[-1], kind, work.dtype, x.device)).to(x.dtype)


class InPlaceDCT:
    """DCT-II / DCT-III in place on buffers shaped like ``rows``, the engine resolved once (a cascade makes 2K
    to 6K transforms of one shape; resolving per call cost more than a small GEMM). No autograd.

    On CPU, pocketfft transforms in place, so a deep cascade reuses a couple of buffers instead of allocating
    (and page-faulting) a fresh one per transform; below the crossover (:func:`matmul_wins`) one GEMM into a
    scratch row block and a copy back. Buffers numpy cannot see (other devices, tracing) take the torch engine.
    """

    def __init__(self, rows: torch.Tensor, eager: bool | None = None) -> None:
        """``eager``: :func:`eager_cpu` of ``rows`` when the caller already knows it."""
        eager = eager_cpu(rows) if eager is None else eager
        self.engine = resolve_engine(rows, eager=eager) if eager else "torch"
        if self.engine == "matmul":
            c = compute_dtype(rows.dtype)
            self.matrices = {kind: transform_matrix(rows.shape[-1], kind, c, rows.device) for kind in (2, 3)}
            self._scratch: torch.Tensor | None = None

    def __call__(self, buffer: torch.Tensor, kind: int) -> torch.Tensor:
        """``buffer`` (..., N) ← its DCT-II (``kind=2``) or DCT-III (``kind=3``) along the last dim."""
        if buffer.shape[-1] == 0:
            return buffer
        if self.engine == "matmul":
            return self._matmul_(buffer, kind)
        if self._numpy_sees(buffer):
            array = buffer.detach().numpy()
            workers = pocketfft_threads(array.size)
            if _DIRECT_POCKETFFT:   # type 2 or 3, last axis, orthonormal (1), written into array itself
                _pypocketfft.dct(array, kind, (array.ndim - 1,), 1, array, workers, None)
                return buffer
            fn = scipy.fft.dct if kind == 2 else scipy.fft.idct
            out = fn(array, type=2, norm="ortho", axis=-1, workers=workers, overwrite_x=True)
            if not np.shares_memory(out, array):
                buffer.copy_(torch.from_numpy(out))
            return buffer
        with torch.no_grad():
            return buffer.copy_(_torch_dct2(buffer) if kind == 2 else _torch_dct3(buffer))

    def _numpy_sees(self, buffer: torch.Tensor) -> bool:
        return self.engine == "scipy" and buffer.is_contiguous() and buffer.dtype in (torch.float32, torch.float64)

    def bound(self, buffer: torch.Tensor) -> Callable[[int], object]:
        """``transform(kind)``: this engine on ``buffer`` itself, with everything that does not change between
        calls (the numpy view, the thread count, the checks) resolved once. A cascade transforms the same row
        block 2K times; per call that resolution cost ~5 µs, a third of a one-row pocketfft call at N = 4096."""
        if _DIRECT_POCKETFFT and buffer.shape[-1] > 0 and self._numpy_sees(buffer):
            array, dct_ = buffer.detach().numpy(), _pypocketfft.dct
            axes, workers = (array.ndim - 1,), pocketfft_threads(array.size)
            return lambda kind: dct_(array, kind, axes, 1, array, workers, None)
        return lambda kind: self(buffer, kind)

    def _matmul_(self, buffer: torch.Tensor, kind: int) -> torch.Tensor:
        matrix = self.matrices[kind]
        if buffer.dtype != matrix.dtype or buffer.dim() != 2:
            with torch.no_grad():
                return buffer.copy_(_matmul_transform(buffer, kind))
        scratch = self._scratch
        if scratch is None or scratch.shape != buffer.shape:
            scratch = self._scratch = torch.empty_like(buffer)
        with torch.no_grad():
            torch.mm(buffer, matrix, out=scratch)
            return buffer.copy_(scratch)


def transform_(buffer: torch.Tensor, kind: int) -> torch.Tensor:
    """DCT-II (``kind=2``) or DCT-III (``kind=3``) of ``buffer`` along the last dim, written into ``buffer``
    (one-off :class:`InPlaceDCT`). No autograd."""
    return InPlaceDCT(buffer)(buffer, kind)


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
    resolved = resolve_engine(x, engine)
    if resolved == "matmul":
        return _matmul_transform(x, kind)
    if resolved == "torch":
        return _torch_dct2(x) if kind == 2 else _torch_dct3(x)
    return _OrthoDCT.apply(x, kind)


def dct(x: torch.Tensor, engine: Engine = "auto") -> torch.Tensor:
    """Orthonormal DCT-II of ``x`` along the last dim: (..., N) -> (..., N); ``y = x C^T`` (eq. 3.27)."""
    return _ortho_transform(x, 2, engine)


def idct(y: torch.Tensor, engine: Engine = "auto") -> torch.Tensor:
    """Orthonormal DCT-III (inverse of :func:`dct`) along the last dim: (..., N) -> (..., N); ``x = y C``."""
    return _ortho_transform(y, 3, engine)

