"""Keep-the-best distillation: a held-out share of the unlabelled inputs, and the student state that imitated the
teacher best on it.

The distiller measures the output loss (KL to the teacher, or MSE, as configured; no feature terms) on inputs it
never trains on, at the start and a few times during the run, and restores the best state at the end. A
distillation therefore never returns a student worse on held-out inputs than the one it was given, the same
guarantee the closed-form fit gives each layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def split_held_out(data: torch.Tensor | Sequence[Any], fraction: float,
                   seed: int) -> tuple[torch.Tensor | Sequence[Any], torch.Tensor | Sequence[Any]]:
    """(train, held): a seeded ``fraction`` of the rows (tensor) or batches (sequence), at least one, set aside.
    With a single row or batch there is nothing to set aside: both are the whole data."""
    count = len(data)
    if fraction <= 0:
        return data, data[:0]
    if count < 2:
        return data, data
    held = min(count - 1, max(1, round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held_index, train_index = order[:held].sort().values, order[held:].sort().values
    if isinstance(data, torch.Tensor):
        return data[train_index], data[held_index]
    return [data[int(i)] for i in train_index], [data[int(i)] for i in held_index]


class BestState:
    """The lowest held-out loss seen, the step it was seen at and a copy of the student's state then; ``history``
    holds every (step, loss) checked. A non-finite loss is never the best."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.loss = math.inf
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float]] = []

    def offer(self, step: int, loss: float, model: nn.Module) -> None:
        self.history.append((step, loss))
        if math.isfinite(loss) and loss < self.loss:
            self.step, self.loss = step, loss
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> bool:
        """Load the best state into ``model`` unless the latest check was the best; True when it loaded."""
        if self.state is None or not self.history or self.history[-1][0] == self.step:
            return False
        model.load_state_dict(self.state)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": self.loss, "history": list(self.history),
                "state": None if self.state is None else {k: v.clone() for k, v in self.state.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.step, self.loss = saved["step"], float(saved["loss"])
        self.history = [(int(s), float(v)) for s, v in saved["history"]]
        self.state = None if saved["state"] is None else {k: v.clone() for k, v in saved["state"].items()}
