"""Training-update time of the noisy recurrent modules against ``nn.LSTM`` / ``nn.GRU`` (CPU).

One update = forward over a (B, T, F) batch, a cross-entropy head on the time-averaged states, backward and an Adam
step: the unit of the Table 4.5 recipe. The torch module and the noisy one are timed interleaved in one process
(A B A B …), so the ratio holds on a busy machine; absolute milliseconds do not carry across runs.

:func:`bench_against_revision` times the same update against the implementation of an earlier commit (default
:data:`PREVIOUS_REVISION`, the time loop before the fused gates: one call per gate and step, φ composed of torch ops
under autograd). That commit's ``surgeon`` package is extracted with ``git archive`` and each implementation runs in
its own worker process, the two driven in lock-step (one update in A, one in B, …); each reports wall time and the
CPU time of its (single) thread, the steadier of the two on a shared machine.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from surgeon.noise.recurrent import NoisyGRU, NoisyLSTM

__all__ = ["PREVIOUS_REVISION", "VARIANTS", "RecurrentRow", "RevisionRow", "Variant", "bench_against_revision",
           "bench_recurrent"]

#: The parent of the commit that fused the gates (4392120): the recurrent modules as first written.
PREVIOUS_REVISION = "4392120^"

class Variant(NamedTuple):
    """A timed case: row label, ``gates``, ``gate_kwargs``, ``clip_gates`` and a factor on torch's initial weights.

    At torch's initial weights almost no gate saturates; a trained LSTM's gates do (about half of them after a few
    hundred updates of the Table 4.5 task), and the noisy gates' cost depends on it (ε is drawn where a unit
    saturates): the ×8 weights saturate about half the gate units, as in training."""

    label: str
    gates: str
    gate_kwargs: dict[str, Any]
    clip: bool
    weight_scale: float = 1.0


#: The variants timed by default.
VARIANTS: tuple[Variant, ...] = (
    Variant("soft", "soft", {}, False),
    Variant("noisy nan", "noisy", {"mode": "nan"}, False),
    Variant("noisy nan, clipped", "noisy", {"mode": "nan"}, True),
    Variant("noisy nan, weights x8", "noisy", {"mode": "nan"}, False, 8.0),
    Variant("mollified", "mollified", {}, False),
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


def _scale_weights(rnn: nn.Module, scale: float) -> None:
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("weight_"):
                param.mul_(scale)


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
                    variants: tuple[Variant, ...] = VARIANTS,
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
           kinds: tuple[str, ...], variants: tuple[Variant, ...],
           on_case: Callable[[str], None] | None) -> list[RecurrentRow]:
    classes = {"lstm": (nn.LSTM, NoisyLSTM), "gru": (nn.GRU, NoisyGRU)}
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, steps, features, generator=gen)
    y = torch.randint(0, 11, (batch,), generator=gen)
    for kind in kinds:
        torch_cls, noisy_cls = classes[kind]
        for hidden in hidden_sizes:
            for v in variants:
                if on_case is not None:
                    on_case(f"{kind} H={hidden} {v.label}")
                torch.manual_seed(0)
                ref = torch_cls(features, hidden, batch_first=True)
                _scale_weights(ref, v.weight_scale)
                noisy = noisy_cls.from_torch(ref, gates=v.gates, gate_kwargs=v.gate_kwargs, clip_gates=v.clip).train()
                ours, theirs = _interleaved(_update(noisy, x, y, 11), _update(ref, x, y, 11), repeats)
                rows.append(RecurrentRow(noisy_cls.__name__, hidden, v.label, ours * 1e3, theirs * 1e3, ours / theirs))
    return rows


@dataclass(frozen=True)
class RevisionRow:
    """One (module, hidden size, gates) case: median wall and thread-CPU ms per update, now and at ``revision``."""

    module: str
    hidden: int
    gates: str
    revision: str
    ms_per_update: float
    revision_ms_per_update: float
    times_faster: float
    cpu_ms_per_update: float
    revision_cpu_ms_per_update: float
    cpu_times_faster: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Runs in a worker process against whichever ``surgeon`` is first on its path; uses only the API both revisions
# share. Reads one JSON case per line ({"run": true} times one more update), answers [wall s, thread CPU s].
_WORKER = """
import json, sys, time
import torch
from torch import nn
from surgeon.noise.recurrent import NoisyGRU, NoisyLSTM
torch.set_num_threads(1)
print(__import__("surgeon").__file__, flush=True)
step = None
for line in sys.stdin:
    msg = json.loads(line)
    if not msg.get("run"):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(msg["batch"], msg["steps"], msg["features"], generator=gen)
        y = torch.randint(0, 11, (msg["batch"],), generator=gen)
        torch.manual_seed(0)
        ref = (nn.LSTM if msg["kind"] == "lstm" else nn.GRU)(msg["features"], msg["hidden"], batch_first=True)
        with torch.no_grad():
            for name, param in ref.named_parameters():
                if name.startswith("weight_"):
                    param.mul_(msg["weight_scale"])
        kw = {"gates": msg["gates"], "gate_kwargs": msg["gate_kwargs"]}
        if msg["clip"]:
            kw["clip_gates"] = True
        rnn = (NoisyLSTM if msg["kind"] == "lstm" else NoisyGRU).from_torch(ref, **kw).train()
        head = nn.Linear(msg["hidden"], 11)
        opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)

        def step():
            loss = nn.functional.cross_entropy(head(rnn(x)[0].mean(dim=1)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()
        step()
    wall, cpu = time.perf_counter(), time.thread_time()
    if msg.get("run"):
        step()
    print(json.dumps([time.perf_counter() - wall, time.thread_time() - cpu]), flush=True)
"""


class _Worker:
    """A worker process timing updates of the ``surgeon`` package under ``path`` (its working directory, first on
    ``sys.path`` for ``python -c``, ahead of any installed copy)."""

    def __init__(self, path: str) -> None:
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=path)
        self.origin = self.proc.stdout.readline().strip() if self.proc.stdout is not None else ""
        if not self.origin.startswith(path):
            raise RuntimeError(f"benchmark worker imported surgeon from {self.origin!r}, not from {path!r}")

    def ask(self, msg: dict[str, Any]) -> tuple[float, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker process ended early (see its error above)")
        wall, cpu = json.loads(line)
        return wall, cpu

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _extract(revision: str, into: str) -> None:
    """Write ``revision``'s ``surgeon`` package under ``into`` (git archive of the checkout this package is in)."""
    root = Path(__file__).resolve().parents[2]
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", revision, "surgeon"],
                                 check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot read revision {revision!r} from a git checkout at {root}: needs the surgeon "
                           "source repository") from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def bench_against_revision(revision: str = PREVIOUS_REVISION, hidden_sizes: tuple[int, ...] = (64, 128), *,
                           batch: int = 64, steps: int = 26, features: int = 16, repeats: int = 7,
                           kinds: tuple[str, ...] = ("lstm",),
                           variants: tuple[Variant, ...] = VARIANTS,
                           on_case: Callable[[str], None] | None = None) -> list[RevisionRow]:
    """Time one training update of each variant now and at ``revision``, in lock-step worker processes.

    Shapes as :func:`bench_recurrent`. Variants the old revision cannot build (``clip_gates`` came later) are left
    out when the revision lacks the option.
    """
    current = str(Path(__file__).resolve().parents[2])
    rows = []
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-") as old_root:
        _extract(revision, old_root)
        has_clip = "clip_gates" in (Path(old_root) / "surgeon/noise/recurrent.py").read_text()
        workers = [_Worker(current), _Worker(old_root)]
        try:
            for kind in kinds:
                for hidden in hidden_sizes:
                    for v in variants:
                        if v.clip and not has_clip:
                            continue
                        if on_case is not None:
                            on_case(f"{kind} H={hidden} {v.label} (now and at {revision})")
                        case = {"kind": kind, "hidden": hidden, "gates": v.gates, "gate_kwargs": v.gate_kwargs,
                                "clip": v.clip, "weight_scale": v.weight_scale, "batch": batch, "steps": steps,
                                "features": features}
                        for w in workers:
                            w.ask(case)
                        times: list[list[tuple[float, float]]] = [[], []]
                        for _ in range(repeats):
                            for w, record in zip(workers, times, strict=True):
                                record.append(w.ask({"run": True}))
                        (now_wall, now_cpu), (old_wall, old_cpu) = (
                            (statistics.median(t[0] for t in rec), statistics.median(t[1] for t in rec))
                            for rec in times)
                        name = "NoisyLSTM" if kind == "lstm" else "NoisyGRU"
                        rows.append(RevisionRow(name, hidden, v.label, revision, now_wall * 1e3, old_wall * 1e3,
                                                old_wall / now_wall, now_cpu * 1e3, old_cpu * 1e3, old_cpu / now_cpu))
        finally:
            for w in workers:
                w.close()
    return rows
