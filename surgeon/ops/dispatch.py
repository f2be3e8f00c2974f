"""Backend dispatch for the structured layers: fused Triton kernels or the pure-torch ``*_ref`` path.

Each op is a ``torch.library.custom_op`` (``surgeon::acdc_cascade``, ``surgeon::fastfood`` and their
``*_backward``) with a fake (meta) implementation and a registered autograd formula, so ``torch.compile`` sees
one opaque node per layer and traces a converted model without graph breaks. The choice of backend happens
inside the op, at run time:

* ``backend`` argument (layers: the ``backend`` attribute) ``"triton"`` / ``"torch"`` forces one;
* else the ``SURGEON_BACKEND`` environment variable (``triton`` / ``torch`` / ``auto``);
* ``"auto"``: Triton for CUDA tensors whose size and dtype the kernels support, torch otherwise.

Sizes or dtypes the kernels do not cover (non powers of two, N > 16384, fp64) always take the torch path, even
when Triton is forced — never a wrong answer. A kernel the GPU cannot launch (too little shared memory: Triton
raises ``OutOfResources`` before it starts) also takes the torch path, after one ``KernelFallbackWarning``.
Forcing Triton for CPU tensors works only under the Triton interpreter (``TRITON_INTERPRET=1``) and raises a
clear error otherwise. Both paths save only the inputs for
backward and recompute the intermediates.
"""

import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Literal, TypeVar

import torch

from surgeon.errors import KernelFallbackWarning
from surgeon.ops.acdc import acdc_cascade_backward as _acdc_bwd_ref
from surgeon.ops.acdc import acdc_cascade_backward_saved, acdc_cascade_forward_saving
from surgeon.ops.acdc import acdc_cascade_forward as _acdc_fwd_ref
from surgeon.ops.dct import eager_cpu
from surgeon.ops.fastfood import fastfood_ref
from surgeon.ops.hadamard import fwht
from surgeon.ops.threads import serial_on_cached_rows
from surgeon.primitives import canonical_activation, compute_dtype, kernel_supported, records_grad

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "SURGEON_BACKEND"
T = TypeVar("T")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


def resolve_backend(x: torch.Tensor, backend: str = "auto", n: int | None = None) -> str:
    """``"triton"`` or ``"torch"``: the path a call with input ``x`` (rows of size ``n``) takes."""
    choice = (backend or "auto").lower()
    if choice == "auto":
        choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; expected one of {', '.join(BACKENDS)} (argument or {ENV_VAR})")
    if choice == "torch":
        return "torch"
    n = x.shape[-1] if n is None else n
    if not kernel_supported(n, x.dtype):
        return "torch"
    if choice == "auto":
        return "triton" if x.is_cuda and _triton_importable() else "torch"
    if not _triton_importable():
        raise RuntimeError("backend 'triton' was requested but triton is not installed")
    if x.is_cuda:
        return "triton"
    if x.device.type == "cpu" and _interpreting():
        return "triton"
    raise RuntimeError(f"backend 'triton' needs CUDA tensors (got {x.device}); on CPU it runs only under the Triton "
                       "interpreter: set TRITON_INTERPRET=1 before importing triton, or use backend='torch'")


def _eager_torch(x: torch.Tensor, backend: str) -> bool:
    """Whether a call on ``x`` runs the torch path in eager CPU mode, where the inference forwards may skip the
    custom op's dispatch (nothing to trace, compile or differentiate)."""
    return eager_cpu(x) and resolve_backend(x, backend) == "torch"


def _kernels():
    from surgeon.kernels import ensure_mode

    return ensure_mode()


# Kernels a GPU had no room for: (op, *launch_key). Those take the torch path from then on.
_NO_ROOM: set[tuple[str, int, str, torch.dtype, str]] = set()


def _on_kernels(op: str, x: torch.Tensor, call: Callable[[ModuleType, ModuleType], T]) -> T | None:
    """``call(acdc, fastfood)`` on the kernel modules, or None (after one warning) if the GPU cannot launch it.

    Triton raises ``OutOfResources`` before a kernel starts, so nothing has been written when this returns None.
    """
    from triton.runtime.errors import OutOfResources

    from surgeon.kernels.common import launch_key

    kernels = _kernels()
    key = (op, *launch_key(x))
    if key in _NO_ROOM:
        return None
    try:
        return call(*kernels)
    except OutOfResources as exc:
        _NO_ROOM.add(key)
        warnings.warn(f"the Triton {op} kernel cannot run on {key[2]} at N={x.shape[-1]} in {x.dtype} ({exc}); "
                      "using the torch path for it", KernelFallbackWarning, stacklevel=3)
        return None


def _owned(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``t`` reshaped to ``shape`` as a tensor that is not a view.

    A custom op must not return a view of one of its intermediates: autograd would then forbid in-place ops on
    the result (``ReLU(inplace=True)`` right after a converted layer). Re-pointing a fresh tensor at the same
    storage avoids both the view and a copy.
    """
    t = t.reshape(shape)
    if t._base is None:
        return t
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.shape,
                                                               t.stride())


# ------------------------------------------------------------------------------------------------------ ACDC


@torch.library.custom_op("surgeon::acdc_cascade", mutates_args=())
def _acdc_cascade_op(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                     perms: torch.Tensor | None, activation: str, backend: str) -> torch.Tensor:
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    out = None
    if resolve_backend(x, backend) == "triton":
        out = _on_kernels("acdc_cascade", x, lambda acdc, _: acdc.acdc_cascade_forward(rows, a, d, b, perms,
                                                                                         activation))
    if out is None:
        c = compute_dtype(x.dtype)
        out = _acdc_fwd_ref(rows.to(c), a.to(c), d.to(c), None if b is None else b.to(c), perms, activation)
    return _owned(out.to(x.dtype), x.shape)


@_acdc_cascade_op.register_fake
def _(x, a, d, b, perms, activation, backend):
    return torch.empty_like(x)


@torch.library.custom_op("surgeon::acdc_cascade_backward", mutates_args=())
def _acdc_cascade_backward_op(grad: torch.Tensor, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor,
                              b: torch.Tensor | None, perms: torch.Tensor | None, activation: str,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    rows, grows = x.reshape(-1, n), grad.reshape(-1, n)
    grads = None
    if resolve_backend(x, backend) == "triton":
        grads = _on_kernels("acdc_cascade_backward", x,
                            lambda acdc, _: acdc.acdc_cascade_backward(grows, rows, a, d, b, perms, activation))
    if grads is None:
        c = compute_dtype(x.dtype)
        grads = _acdc_bwd_ref(grows.to(c).contiguous(), rows.to(c), a.to(c), d.to(c),
                              None if b is None else b.to(c), perms, activation)
    dx, da, dd, db = grads
    db = a.new_empty(0) if db is None else db.to(b.dtype)
    return _owned(dx.to(x.dtype), x.shape), da.to(a.dtype), dd.to(d.dtype), db


@_acdc_cascade_backward_op.register_fake
def _(grad, x, a, d, b, perms, activation, backend):
    return torch.empty_like(x), torch.empty_like(a), torch.empty_like(d), (a.new_empty(0) if b is None
                                                                           else torch.empty_like(b))


def _acdc_setup(ctx, inputs, output):
    x, a, d, b, perms, activation, backend = inputs
    ctx.has_bias = b is not None
    ctx.activation, ctx.backend = activation, backend
    ctx.save_for_backward(x, a, d, b, perms)


def _acdc_backward(ctx, grad):
    x, a, d, b, perms = ctx.saved_tensors
    dx, da, dd, db = _acdc_cascade_backward_op(grad, x, a, d, b, perms, ctx.activation, ctx.backend)
    return dx, da, dd, (db if ctx.has_bias else None), None, None, None


_acdc_cascade_op.register_autograd(_acdc_backward, setup_context=_acdc_setup)


# recompute=False (torch path only): the forward also returns every factor's input and spectrum, the backward
# takes them instead of recomputing them. Saved in the compute dtype: (2K-1)·M·N numbers per call.
@torch.library.custom_op("surgeon::acdc_cascade_saving", mutates_args=())
def _acdc_saving_op(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                    perms: torch.Tensor | None,
                    activation: str) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    c = compute_dtype(x.dtype)
    out, inside, spectra = acdc_cascade_forward_saving(x.reshape(-1, x.shape[-1]).to(c), a.to(c), d.to(c),
                                                       None if b is None else b.to(c), perms, activation)
    return _owned(out.to(x.dtype), x.shape), inside, spectra


@_acdc_saving_op.register_fake
def _(x, a, d, b, perms, activation):
    rows = x.reshape(-1, x.shape[-1])
    c = compute_dtype(x.dtype)
    return (torch.empty_like(x), [rows.new_empty(rows.shape, dtype=c) for _ in range(a.shape[0] - 1)],
            [rows.new_empty(rows.shape, dtype=c) for _ in range(a.shape[0])])


@torch.library.custom_op("surgeon::acdc_cascade_backward_saved", mutates_args=())
def _acdc_backward_saved_op(grad: torch.Tensor, x: torch.Tensor, inside: list[torch.Tensor],
                            spectra: list[torch.Tensor], a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                            perms: torch.Tensor | None,
                            activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c, n = spectra[0].dtype, x.shape[-1]
    dx, da, dd, db = acdc_cascade_backward_saved(
        grad.reshape(-1, n).to(c).contiguous(), x.reshape(-1, n).to(c), inside, spectra, a.to(c), d.to(c),
        None if b is None else b.to(c), perms, activation)
    db = a.new_empty(0) if db is None else db.to(b.dtype)
    return _owned(dx.to(x.dtype), x.shape), da.to(a.dtype), dd.to(d.dtype), db


@_acdc_backward_saved_op.register_fake
def _(grad, x, inside, spectra, a, d, b, perms, activation):
    return torch.empty_like(x), torch.empty_like(a), torch.empty_like(d), (a.new_empty(0) if b is None
                                                                           else torch.empty_like(b))


def _saving_setup(ctx, inputs, output):
    x, a, d, b, perms, activation = inputs
    ctx.has_bias, ctx.activation, ctx.depth = b is not None, activation, a.shape[0]
    # The saved intermediates are outputs nobody differentiates: without this autograd hands the backward a
    # zero-filled gradient for each of them, (2K-1)·M·N numbers written every step (a fifth of it at N = 8192).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, a, d, b, perms, *output[1], *output[2])


def _saving_backward(ctx, grad, _inside_grad, _spectra_grad):
    x, a, d, b, perms, *kept = ctx.saved_tensors
    if grad is None:
        grad = torch.zeros_like(x)
    inside, spectra = kept[: ctx.depth - 1], kept[ctx.depth - 1:]
    dx, da, dd, db = _acdc_backward_saved_op(grad, x, inside, spectra, a, d, b, perms, ctx.activation)
    return dx, da, dd, (db if ctx.has_bias else None), None, None


_acdc_saving_op.register_autograd(_saving_backward, setup_context=_saving_setup)


def acdc_cascade(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None,
                 perms: torch.Tensor | None, activation: str | None = "relu",
                 backend: Backend = "auto", recompute: bool = True) -> torch.Tensor:
    """ACDC cascade (same contract as ``acdc_cascade_ref``) on the chosen backend.

    x (..., N); a, d (K, N); b (K, N) or None; perms (K-1, N) int64 or None -> (..., N) in ``x.dtype``.
    Every factor is ``y = Cᵀ(C(z ⊙ a_k) ⊙ d_k + b_k)``; between factors ``z = act(y)[perm_k]`` (eq. 3.24).

    ``recompute=False`` (torch path; the fused kernels always recompute) keeps every factor's input and spectrum
    for backward when gradients are needed — (2K-1)·M·N extra numbers — and skips the backward's re-run of the
    forward: 4K transforms per step instead of 6K-1.
    """
    activation = canonical_activation(activation)
    n = x.shape[-1]
    if a.shape != d.shape or a.dim() != 2 or a.shape[1] != n:
        raise ValueError(f"diagonals must both be (K, {n}); got {tuple(a.shape)} and {tuple(d.shape)}")
    if b is not None and b.shape != a.shape:
        raise ValueError(f"bias must be {tuple(a.shape)}; got {tuple(b.shape)}")
    if perms is not None and (a.shape[0] < 2 or perms.shape != (a.shape[0] - 1, n)):
        perms = None if a.shape[0] < 2 else perms
        if perms is not None:
            raise ValueError(f"perms must be ({a.shape[0] - 1}, {n}); got {tuple(perms.shape)}")
    wants_grad = records_grad(x, a, d, b)
    if not recompute and wants_grad and resolve_backend(x, backend) == "torch":
        return _acdc_saving_op(x, a, d, b, perms, activation)[0]
    if not wants_grad and _eager_torch(x, backend):
        return _acdc_inference(x, a, d, b, perms, activation)
    return _acdc_cascade_op(x, a, d, b, perms, activation, backend)


def _acdc_inference(x, a, d, b, perms, activation):
    """Eager CPU forward without autograd: the torch path, told that the parameters will be reused, so that at
    small N it builds (once) and keeps the dense factor matrices (surgeon.ops.dense_cascade). Nothing is
    converted or re-pointed that needs not be (each cost microseconds of a ~0.5 ms batch-1 forward)."""
    c = compute_dtype(x.dtype)
    a, d, b = (t if t is None or t.dtype == c else t.to(c) for t in (a, d, b))
    rows = x.reshape(-1, x.shape[-1])
    out = _acdc_fwd_ref(rows if rows.dtype == c else rows.to(c), a, d, b, perms, activation, reused=True)
    if out.dtype != x.dtype:
        out = out.to(x.dtype)
    return out if out._base is None and out.shape == x.shape else _owned(out, x.shape)


def acdc_factor(x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, b: torch.Tensor | None = None,
                backend: Backend = "auto") -> torch.Tensor:
    """One ACDC factor ``IDCT(DCT(x ⊙ a) ⊙ d + b)``: x (..., N); a, d, b (N,) -> (..., N)."""
    return acdc_cascade(x, a.unsqueeze(0), d.unsqueeze(0), None if b is None else b.unsqueeze(0), None, "none",
                        backend)


# -------------------------------------------------------------------------------------------------- Fastfood


@torch.library.custom_op("surgeon::fastfood", mutates_args=())
def _fastfood_op(x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor, binary: torch.Tensor,
                 perm: torch.Tensor, backend: str) -> torch.Tensor:
    n = x.shape[-1]
    if resolve_backend(x, backend) == "triton":
        out = _on_kernels("fastfood", x, lambda _, ff: ff.fastfood_forward(x.reshape(-1, n), scale, gauss, binary,
                                                                            perm))
        if out is not None:
            return _owned(out, (*x.shape[:-1], out.shape[-1]))
    with torch.no_grad():
        out = fastfood_ref(x, scale, gauss, binary, perm)
        return _owned(out, out.shape)


@_fastfood_op.register_fake
def _(x, scale, gauss, binary, perm, backend):
    return x.new_empty((*x.shape[:-1], scale.shape[0] * x.shape[-1]))


@torch.library.custom_op("surgeon::fastfood_backward", mutates_args=())
def _fastfood_backward_op(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor,
                          binary: torch.Tensor, perm: torch.Tensor,
                          backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    if resolve_backend(x, backend) == "triton":
        grads = _on_kernels("fastfood_backward", x, lambda _, ff: ff.fastfood_backward(
            grad.reshape(x.reshape(-1, n).shape[0], -1), x.reshape(-1, n), scale, gauss, binary, perm))
        if grads is not None:
            dx, ds, dg, db = grads
            return _owned(dx, x.shape), ds, dg, db
    return _fastfood_backward_torch(grad, x, scale, gauss, binary, perm)


@serial_on_cached_rows
def _fastfood_backward_torch(grad, x, scale, gauss, binary, perm):
    """Eq. 3.13 with Ĥ symmetric, recomputing ``u = Ĥ B x`` and ``q = Ĥ G Π u`` from ``x``."""
    blocks, n = scale.shape
    c = compute_dtype(x.dtype)
    rows = x.reshape(-1, 1, n).to(c)
    g = grad.reshape(rows.shape[0], blocks, n).to(c)
    s, ga, bi = scale.to(c), gauss.to(c), binary.to(c)
    index = perm.unsqueeze(0).expand(rows.shape[0], blocks, n)
    u = fwht(rows * bi, normalized=True)
    w = torch.gather(u, -1, index)
    q = fwht(w * ga, normalized=True)
    gw = fwht(g * s, normalized=True)
    gu = torch.zeros_like(gw).scatter_(-1, index, gw * ga)
    gv = fwht(gu, normalized=True)
    dx = (gv * bi).sum(1).reshape(x.shape)
    return (_owned(dx.to(x.dtype), x.shape), (g * q).sum(0).to(scale.dtype), (gw * w).sum(0).to(gauss.dtype),
            (gv * rows).sum(0).to(binary.dtype))


@_fastfood_backward_op.register_fake
def _(grad, x, scale, gauss, binary, perm, backend):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(gauss), torch.empty_like(binary)


def _fastfood_setup(ctx, inputs, output):
    x, scale, gauss, binary, perm, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(x, scale, gauss, binary, perm)


def _fastfood_backward(ctx, grad):
    x, scale, gauss, binary, perm = ctx.saved_tensors
    dx, ds, dg, db = _fastfood_backward_op(grad, x, scale, gauss, binary, perm, ctx.backend)
    return dx, ds, dg, db, None, None


_fastfood_op.register_autograd(_fastfood_backward, setup_context=_fastfood_setup)


def fastfood(x: torch.Tensor, scale: torch.Tensor, gauss: torch.Tensor, binary: torch.Tensor, perm: torch.Tensor,
             backend: Backend = "auto") -> torch.Tensor:
    """``S Ĥ G Π Ĥ B x`` over stacked blocks (same contract as ``fastfood_ref``) on the chosen backend.

    x (..., d); scale, gauss, binary, perm (blocks, d) -> (..., blocks·d) in ``x.dtype``.
    """
    if scale.dim() != 2 or scale.shape[1] != x.shape[-1]:
        raise ValueError(f"diagonals must be (blocks, {x.shape[-1]}); got {tuple(scale.shape)}")
    if not records_grad(x, scale, gauss, binary) and _eager_torch(x, backend):
        # eager inference on CPU: straight to the torch path, without the custom op's dispatch (~40 µs a call,
        # a sixth of a batch-1 forward at N = 4096); its output is a tensor nothing else holds, as the op's is
        return fastfood_ref(x, scale, gauss, binary, perm)
    return _fastfood_op(x, scale, gauss, binary, perm, backend)
