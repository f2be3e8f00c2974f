"""Index tensors derived once from a layer's permutation buffer and reused while that buffer is unchanged.

A layer's permutations serve every call, but the fast CPU gather (``index_select``) wants int32 indices, flat
over stacked blocks or inverted for a backward pass; deriving them costs a pass over the buffer and a few small
allocations, a tenth of a batch-1 forward at N = 4096. The derived tensors are kept per (buffer, kind) while
the buffer is alive (a weak reference) and unchanged: same version counter (in-place updates), storage, device,
dtype and shape (``.data`` re-pointing, ``set_``). Writes that bypass the version counter on the same storage
(``buffer.data.copy_(...)``, through ``.numpy()``) are not seen: call :func:`clear` after them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

# (id(source), kind) -> (weak reference to source, its signature, derived value)
_CACHE: dict[tuple[int, str], tuple] = {}


def _signature(source: torch.Tensor) -> tuple:
    return source._version, source.data_ptr(), source.device, source.dtype, tuple(source.shape)


def clear() -> None:
    """Forget every derived tensor (after writes the version counter does not see)."""
    _CACHE.clear()


def derived(source: torch.Tensor, kind: str, build: Callable[[torch.Tensor], T]) -> T:
    """``build(source)``, computed once per ``kind`` while ``source`` is the same unchanged tensor.

    ``build`` runs outside inference mode and without autograd, so what it returns can serve any later call; it
    must not return views of ``source`` (the cache would keep ``source`` alive).
    An inference tensor has no version counter to watch, so it is derived afresh every time.
    """
    if source.is_inference():
        return _build(source, build)
    key = (id(source), kind)
    entry = _CACHE.get(key)
    signature = _signature(source)
    if entry is None or entry[0]() is not source or entry[1] != signature:
        ref = weakref.ref(source, lambda _: _CACHE.pop(key, None))
        entry = _CACHE[key] = (ref, signature, _build(source, build))
    return entry[2]


def _build(source: torch.Tensor, build: Callable[[torch.Tensor], T]) -> T:
    with torch.inference_mode(False), torch.no_grad():
        return build(source)
