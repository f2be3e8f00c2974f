"""Bytes a model stores (parameters, buffers) and bytes a training forward keeps for the backward pass."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

STORAGE_DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}


def storage_bytes(tensors: list[torch.Tensor]) -> dict[str, int]:
    """Bytes to store ``tensors`` with floating ones cast to fp32 / fp16 / bf16 (integer ones keep their size)."""
    out = {}
    for label, size in STORAGE_DTYPES.items():
        out[label] = sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)
    return out


class SavedTensorMeter:
    """Attributes the bytes autograd saves for backward to the innermost module running when they are saved.

    Each storage is counted once (a tensor saved by two ops, or two views of one tensor, is one allocation);
    parameters and buffers are not activations and are left out.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[nn.Module] = []
        self.by_module: dict[int, int] = {}
        self.unattributed = 0
        self._seen: set[tuple[int, str]] = set()
        self._own = {self._key(t) for t in [*model.parameters(), *model.buffers()]}

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple[int, str]:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), str(tensor.device)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = self._key(tensor)
        if key not in self._seen and key not in self._own and key[0] != 0:
            self._seen.add(key)
            nbytes = tensor.untyped_storage().nbytes()
            if self.stack:
                owner = id(self.stack[-1])
                self.by_module[owner] = self.by_module.get(owner, 0) + nbytes
            else:
                self.unattributed += nbytes
        return tensor

    @contextmanager
    def measuring(self, on_call: Callable[[nn.Module, tuple, Any], None] | None = None):
        """Within this context, forward calls of ``model``'s submodules are tracked (global module hooks, removed
        on exit; the model's own hook dictionaries are never touched)."""
        members = {id(m) for m in self.model.modules()}

        def pre(module: nn.Module, args: tuple) -> None:
            if id(module) in members:
                self.stack.append(module)

        def post(module: nn.Module, args: tuple, output: Any) -> None:
            if id(module) in members:
                if self.stack and self.stack[-1] is module:
                    self.stack.pop()
                if on_call is not None:
                    on_call(module, args, output)

        handles = [nn.modules.module.register_module_forward_pre_hook(pre),
                   nn.modules.module.register_module_forward_hook(post)]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for handle in handles:
                handle.remove()
