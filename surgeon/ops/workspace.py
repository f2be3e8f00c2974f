"""Recycled row buffers for what ``recompute=False`` saves for backward (CPU).

A depth-K cascade saves 2K-1 tensors of the batch's shape per step: 184 MB at N = 8192, batch 256. Freed after
the backward, that much memory goes back to the OS (glibc trims the heap), and the next step page-faults all of
it afresh: ~47k faults, about 0.1-0.2 s a step on the reference machine, a fifth of the step. The pool keeps the
buffers and hands one out again once nothing but the pool holds its storage (autograd has let go of it), so
``retain_graph`` and saved graphs stay correct: a buffer still referenced anywhere is never reused.

Memory is bounded: the pool holds at most ``POOL_MAX_BYTES`` (requests beyond it get plain fresh tensors), and a
request that finds no free buffer of its shape first drops the free buffers of every other shape. What it holds
stays allocated between steps, like a caching allocator; :func:`clear` drops every free buffer.
"""

from __future__ import annotations

import collections

import torch

__all__ = ["clear", "idle_bytes", "rows_buffer"]

POOL_MAX_BYTES = 2**30   # 1 GiB: a depth-12 cascade at N = 8192 and batch 256 keeps 184 MB
Key = tuple[tuple[int, ...], torch.dtype, torch.device]
_POOL: dict[Key, collections.deque[torch.Tensor]] = {}
_held = [0]   # bytes in the pool, busy or free


def _storage_refs(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _make_probe() -> int | None:
    """What :func:`_storage_refs` reads for a tensor nobody else holds, or None when this torch lacks the call."""
    try:
        return _storage_refs(torch.empty(1))
    except (AttributeError, RuntimeError):
        return None


_ALONE = _make_probe()


def _free(t: torch.Tensor) -> bool:
    return _storage_refs(t) <= _ALONE  # type: ignore[operator]


def rows_buffer(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor with ``like``'s shape, dtype and device: a recycled one when the pool
    has one nobody holds any more, else a fresh one that joins the pool."""
    if _ALONE is None or like.device.type != "cpu":
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    key = (tuple(like.shape), like.dtype, like.device)
    queue = _POOL.setdefault(key, collections.deque())
    for _ in range(len(queue)):
        buffer = queue.popleft()
        queue.append(buffer)
        if _free(buffer):
            return buffer.detach()  # a tensor of its own on the storage: the pool's stops counting as the holder
    _drop_free(keep=key)
    buffer = torch.empty_like(like, memory_format=torch.contiguous_format)
    size = buffer.numel() * buffer.element_size()
    if _held[0] + size > POOL_MAX_BYTES:
        return buffer
    _held[0] += size
    queue.append(buffer)
    return buffer.detach()


def _drop_free(keep: Key | None = None) -> None:
    for key in list(_POOL):
        if key == keep:
            continue
        busy = collections.deque()
        for t in _POOL[key]:
            if _free(t):
                _held[0] -= t.numel() * t.element_size()
            else:
                busy.append(t)
        if busy:
            _POOL[key] = busy
        else:
            del _POOL[key]


def clear() -> None:
    """Drop every buffer nobody else holds (the busy ones stay until they are free and the pool is cleared)."""
    _drop_free()


def idle_bytes() -> int:
    """Bytes held by the pool in buffers nobody else holds."""
    return sum(t.numel() * t.element_size() for queue in _POOL.values() for t in queue if _free(t))
