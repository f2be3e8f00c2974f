"""Original (pre-surgery) models of the checkpoints in ``tests/fixtures/legacy`` (see tests/test_io_legacy.py).

Their weights come from the files, so only the architectures must match what the fixtures were made from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.zoo import LSTMLanguageModel


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


class FunctionalNet(nn.Module):
    """F.linear and torch.tanh/sigmoid calls in forward: surgery returns an fx.GraphModule."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(48, 24) * 0.2)
        self.b1 = nn.Parameter(torch.zeros(48))
        self.out = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.linear(x, self.w1, self.b1))
        return torch.sigmoid(self.out(h))


def functional() -> nn.Module:
    return FunctionalNet()


def lstm_lm() -> nn.Module:
    return LSTMLanguageModel(vocab=40, embed=12, hidden=16, layers=1)


def sigmoid_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 4))


def inputs(name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    if name == "lstm_lm":
        return torch.randint(0, 40, (2, 7), generator=gen)
    features = {"mlp": 32, "functional": 24, "sigmoid_mlp": 16}[name]
    return torch.randn(3, features, generator=gen)
