"""Training-update time of the noisy recurrent modules against ``nn.LSTM`` / ``nn.GRU`` (CPU).

One update = forward over a (B, T, F) batch, a cross-entropy head on the time-averaged states, backward and an Adam
step: the unit of the Table 4.5 recipe. The torch module and the noisy one are timed interleaved in one process
(A B A B …), so the ratio holds on a busy machine; absolute milliseconds do not carry across runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from surgeon.noise.recurrent import NoisyGRU, NoisyLSTM

__all__ = ["RecurrentRow", "bench_recurrent"]

#: (label, gates, gate_kwargs, clip_gates) of the variants timed by default.
VARIANTS: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("soft", "soft", {}, False),
    ("noisy nan", "noisy", {"mode": "nan"}, False),
    ("noisy nan, clipped", "noisy", {"mode": "nan"}, True),
    ("mollified", "mollified", {}, False),
)


@dataclass(frozen=True)
class RecurrentRow:
    """One (module, hidden size, gates) case: median ms per training update and the ratio to torch's module."""

    module: str
    hidden: int
    gates: str
    ms_per_update: float
    torch_ms_per_update: float
    times_torch: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _update(rnn: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int) -> Callable[[], None]:
    head = nn.Linear(rnn.hidden_size, classes)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)

    def step() -> None:
        out, _ = rnn(x)
        loss = nn.functional.cross_entropy(head(out.mean(dim=1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _interleaved(a: Callable[[], None], b: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median seconds of a and b, timed in turn."""
    for _ in range(2):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def bench_recurrent(hidden_sizes: tuple[int, ...] = (64, 128), *, batch: int = 64, steps: int = 26,
                    features: int = 16, repeats: int = 7, kinds: tuple[str, ...] = ("lstm",),
                    variants: tuple[tuple[str, str, dict[str, Any], bool], ...] = VARIANTS,
                    on_case: Callable[[str], None] | None = None) -> list[RecurrentRow]:
    """Time one training update of each noisy variant against the torch module it replaces.

    Shapes: input (batch, steps, features), hidden size H from ``hidden_sizes``, 11 classes (Table 4.5's task).
    Runs on one CPU thread, as the recipes do (restored afterwards).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(hidden_sizes, batch, steps, features, repeats, kinds, variants, on_case)
    finally:
        torch.set_num_threads(previous)


def _bench(hidden_sizes: tuple[int, ...], batch: int, steps: int, features: int, repeats: int,
           kinds: tuple[str, ...], variants: tuple[tuple[str, str, dict[str, Any], bool], ...],
           on_case: Callable[[str], None] | None) -> list[RecurrentRow]:
    classes = {"lstm": (nn.LSTM, NoisyLSTM), "gru": (nn.GRU, NoisyGRU)}
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, steps, features, generator=gen)
    y = torch.randint(0, 11, (batch,), generator=gen)
    for kind in kinds:
        torch_cls, noisy_cls = classes[kind]
        for hidden in hidden_sizes:
            for label, gates, gate_kwargs, clip in variants:
                if on_case is not None:
                    on_case(f"{kind} H={hidden} {label}")
                torch.manual_seed(0)
                ref = torch_cls(features, hidden, batch_first=True)
                noisy = noisy_cls.from_torch(ref, gates=gates, gate_kwargs=gate_kwargs, clip_gates=clip).train()
                ours, theirs = _interleaved(_update(noisy, x, y, 11), _update(ref, x, y, 11), repeats)
                rows.append(RecurrentRow(noisy_cls.__name__, hidden, label, ours * 1e3, theirs * 1e3, ours / theirs))
    return rows
