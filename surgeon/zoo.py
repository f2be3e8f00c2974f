"""Built-in example architectures, so every command has something real to work on without a download.

The shapes follow the thesis's targets: an AlexNet whose 9216–4096–4096–1000 classifier holds 58.6M of its
61.1M parameters (§3.9.7; the module names equal torchvision's, so its weights load), an MNIST-sized MLP, and
an LSTM language model. Models are freshly initialised (untrained).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from surgeon.errors import ConfigError


class AlexNet(nn.Module):
    """AlexNet as in torchvision (same module names): (B, 3, H, W) -> (B, num_classes), H, W ≥ 63."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MLP(nn.Module):
    """A ReLU MLP: (B, in) -> (B, out); the default is the MNIST-sized 784–1024–1024–10."""

    def __init__(self, sizes: tuple[int, ...] = (784, 1024, 1024, 10)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM with sigmoid/tanh gates, and a Linear head: (B, T) int64 -> (B, T, vocab)."""

    def __init__(self, vocab: int = 1000, embed: int = 256, hidden: int = 512, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(torch.tanh(self.proj(out)))


# name -> (factory, example input shape, input dtype)
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]] = {
    "alexnet": (AlexNet, (1, 3, 224, 224), torch.float32),
    "mlp": (MLP, (1, 784), torch.float32),
    "lstm-lm": (LSTMLanguageModel, (1, 35), torch.int64),
}


def example_names() -> list[str]:
    return sorted(EXAMPLES)


def build_example(name: str) -> nn.Module:
    """A freshly initialised built-in example model (see :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example model {name!r}; available: {', '.join(example_names())}")
    return EXAMPLES[name][0]()


def example_input(name: str, batch: int | None = None) -> torch.Tensor:
    """A deterministic example input for the built-in model ``name``."""
    _, shape, dtype = EXAMPLES[name]
    if batch is not None:
        shape = (batch, *shape[1:])
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int64:
        return torch.randint(0, 1000, shape, generator=gen)
    return torch.randn(shape, generator=gen)
