"""Inference latency of one layer on CPU, in torch eager and in onnxruntime, against the dense layer it replaces.

For every N and batch: ``nn.Linear(N, N)``, ``ACDCLinear`` at depth 12 and 4, ``FastfoodLinear`` and, where the
package has it, ``LowRankLinear`` at ACDC-12's parameter count, each run in torch (``inference_mode``) and in
onnxruntime (the file :func:`surgeon.export_onnx` writes, 2 intra-op threads like torch, with onnxruntime's
default spinning threads, timed in a child process: :mod:`surgeon.bench.ort_timing`). The calls of one (N, batch)
cell and runtime are interleaved round by round in shuffled orders, so machine noise hits every layer alike; a
row's ``speedup`` is the dense layer's median over the layer's median **in the same runtime**, measured in this
one run.
The torch runtime also times "24 DCTs of ACDC-12": the cascade's 2K in-place transforms alone on the same rows,
with its engine and thread rule — a floor on ACDC-12's time, so its speed-up over dense bounds ACDC-12's.
``compare_engine`` adds, for each ACDC layer in torch, the same layer with that DCT engine forced (e.g. ``scipy``:
pocketfft at every size, the path before small-N GEMMs), in the same interleaved rounds.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import surgeon
from surgeon.bench.ort_timing import ort_samples
from surgeon.io.onnx_export import export_onnx
from surgeon.layers import ACDCLinear, FastfoodLinear
from surgeon.ops.dct import InPlaceDCT, forced_engine
from surgeon.ops.threads import row_blocks, serial_torch

SIZES = (1024, 4096, 8192)
BATCHES = (1, 8, 64, 256)
THREADS = 2
RUNTIMES = ("torch", "onnxruntime")
INFERENCE_ROUNDS = 9
LONG_CELL_ROUNDS = 5


@dataclass
class InferenceRow:
    """One layer at one (N, batch) in one runtime."""

    n: int
    batch: int
    layer: str
    runtime: str
    ms: float
    dense_ms: float           # nn.Linear(N, N) in the same runtime, same cell
    speedup: float            # dense_ms / ms
    vs_torch: float | None    # onnxruntime rows: torch ms of the same layer / this ms
    target: str
    met: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def _lowrank(n: int, params: int) -> nn.Module | None:
    cls = getattr(surgeon, "LowRankLinear", None)
    if cls is None:
        return None
    return cls(n, n, rank=max(1, params // (2 * n)))


def candidate_layers(n: int) -> dict[str, nn.Module]:
    """The layers benchmarked at size N, dense first (all fp32, eval mode, fixed seeds)."""
    torch.manual_seed(0)
    layers: dict[str, nn.Module] = {"dense": nn.Linear(n, n), "ACDC-12": ACDCLinear(n, n, depth=12, seed=0),
                                    "ACDC-4": ACDCLinear(n, n, depth=4, seed=0), "Fastfood": FastfoodLinear(n, n)}
    lowrank = _lowrank(n, sum(p.numel() for p in layers["ACDC-12"].parameters()))
    if lowrank is not None:
        layers["low-rank"] = lowrank
    return {name: layer.eval() for name, layer in layers.items()}


def _target(n: int, batch: int, layer: str) -> float | None:
    """The deployment issue's goals (minimum speed-up over dense), at N = 4096."""
    if n != 4096:
        return None
    if layer == "ACDC-12":
        return 2.0 if batch <= 64 else 1.0
    return 5.0 if layer == "Fastfood" else None


def interleaved_samples(calls: dict[str, Callable[[], object]], repeats: int,
                        warmup: int = 1, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each call of each function, calling them round-robin ``repeats`` times after ``warmup``
    untimed rounds; ``samples[name][r]`` is round r.

    Every round takes its own shuffled order (seeded): a call pays for what ran just before it — the dense
    layer's 64 MB weight read evicts the caches, idle threads of a multi-threaded call are still spinning — and a
    fixed order, even rotated, gives every call the same predecessor each round (measured: Fastfood at N = 4096,
    batch 1, read 0.71 ms right after the dense layer against 0.31 ms in any other place).
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    order = random.Random(seed)
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function over :func:`interleaved_samples`' rounds."""
    return {name: statistics.median(times) for name, times in interleaved_samples(calls, repeats, warmup).items()}


def _export(layers: dict[str, nn.Module], n: int, folder: Path) -> dict[str, str]:
    files = {}
    for name, layer in layers.items():
        path = folder / f"{name}_{n}.onnx"
        export_onnx(layer, torch.randn(2, n), path, check=False)
        files[name] = str(path)
    return files


def _rounds(n: int, batch: int, repeats: int) -> int:
    """Interleaved rounds for one cell: at least ``INFERENCE_ROUNDS`` (five rounds let one slow phase of the
    host, a few hundred ms, set a median: Fastfood at batch 256 read 15.8 ms in one run and 5-8 ms in every
    other), fewer where one call takes long (N = 8192, batch 256) to keep the run to about a minute."""
    return max(repeats, INFERENCE_ROUNDS if batch * n <= 256 * 4096 else LONG_CELL_ROUNDS)


def transforms_only(buffer: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` in-place DCTs of ``buffer`` (alternately II and III) with the cascade's engine, thread rule and
    row blocks (every transform of a block before the next block): the part of an ACDC forward no fusion of its
    elementwise passes can remove."""
    blocks = row_blocks(buffer.shape[0], buffer.shape[-1])
    with serial_torch(buffer):
        transform_ = InPlaceDCT(buffer[blocks[0]])
        for rows in blocks:
            block = buffer[rows]
            for k in range(count):
                transform_(block, 2 + k % 2)
    return buffer


def _under_engine(engine: str, layer: nn.Module, x: torch.Tensor) -> object:
    with forced_engine(engine):  # type: ignore[arg-type]
        return layer(x)


def _cell_calls(layers: dict[str, nn.Module], x: torch.Tensor,
                compare_engine: str | None) -> dict[str, Callable[[], object]]:
    calls: dict[str, Callable[[], object]] = {}
    for name, layer in layers.items():
        calls[name] = lambda layer=layer: layer(x)
        if compare_engine and isinstance(layer, ACDCLinear):
            calls[f"{name} [{compare_engine} DCT]"] = lambda layer=layer: _under_engine(compare_engine, layer, x)
        if name == "ACDC-12":
            calls["24 DCTs of ACDC-12"] = lambda scratch=x.clone(): transforms_only(scratch, 24)
    return calls


def _rows(n: int, batch: int, medians: dict[tuple[str, str], float]) -> list[InferenceRow]:
    rows = []
    for (name, runtime), seconds in medians.items():
        if name == "dense":
            continue
        dense = medians["dense", runtime]
        torch_s = medians.get((name, "torch"))
        vs_torch = torch_s / seconds if runtime == "onnxruntime" and torch_s else None
        goal = _target(n, batch, name)
        rows.append(InferenceRow(n, batch, name, runtime, seconds * 1e3, dense * 1e3, dense / seconds, vs_torch,
                                 "" if goal is None else f"≥ {goal:g}×",
                                 None if goal is None else dense / seconds >= goal))
    return rows


def bench_inference(sizes: Sequence[int] = SIZES, batches: Sequence[int] = BATCHES, repeats: int = 7,
                    runtimes: Sequence[str] = RUNTIMES, on_case: Callable[[str], None] | None = None,
                    compare_engine: str | None = None) -> list[InferenceRow]:
    """Forward latency rows for every N in ``sizes`` and batch in ``batches`` (fp32, CPU, 2 threads); with
    ``compare_engine``, extra torch rows for the ACDC layers under that forced DCT engine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    rows: list[InferenceRow] = []
    try:
        with tempfile.TemporaryDirectory(prefix="surgeon-bench-") as tmp:
            for n in sizes:
                layers = candidate_layers(n)
                medians: dict[int, dict[tuple[str, str], float]] = {batch: {} for batch in batches}
                if "onnxruntime" in runtimes:
                    if on_case is not None:
                        on_case(f"N={n}: onnxruntime")
                    files = _export(layers, n, Path(tmp))
                    samples = ort_samples(files, n, batches, {b: _rounds(n, b, repeats) for b in batches}, THREADS)
                    for batch in batches:
                        medians[batch].update({(name, "onnxruntime"): statistics.median(times)
                                               for name, times in samples[batch].items()})
                if "torch" in runtimes:
                    for batch in batches:
                        if on_case is not None:
                            on_case(f"N={n}, batch {batch}: torch")
                        x = torch.randn(batch, n)
                        with torch.inference_mode():
                            calls = _cell_calls(layers, x, compare_engine)
                            timed = interleaved_medians(calls, _rounds(n, batch, repeats))
                        medians[batch].update({(name, "torch"): seconds for name, seconds in timed.items()})
                for batch in batches:
                    rows += _rows(n, batch, medians[batch])
                del layers
    finally:
        torch.set_num_threads(previous)
    return rows


def speedup_table(rows: Sequence[InferenceRow]) -> str:
    """The rows as one Markdown table: a line per (N, layer), the speed-up over dense per runtime and batch, and
    the dense layer's ms per cell underneath."""
    runtimes = [rt for rt in RUNTIMES if any(r.runtime == rt for r in rows)]
    batches = sorted({r.batch for r in rows})
    cells = {(r.n, r.layer, r.runtime, r.batch): r for r in rows}
    columns = [(rt, b) for rt in runtimes for b in batches]
    head = "| N | layer | " + " | ".join(f"{rt} b{b}" for rt, b in columns) + " |"
    lines = [head, "|" + "---|" * (2 + len(columns))]
    keys = list(dict.fromkeys((r.n, r.layer) for r in rows))
    for n, layer in keys:
        values = [cells.get((n, layer, rt, b)) for rt, b in columns]
        lines.append(f"| {n} | {layer} | " + " | ".join("" if v is None else f"×{v.speedup:.2f}" for v in values)
                     + " |")
        if layer == keys[-1][1] or keys[keys.index((n, layer)) + 1][0] != n:
            dense = [next((r.dense_ms for r in rows if (r.n, r.runtime, r.batch) == (n, rt, b)), None)
                     for rt, b in columns]
            lines.append(f"| {n} | dense ms | " + " | ".join("" if v is None else f"{v:.3g}" for v in dense) + " |")
    return "\n".join(lines)


def engine_table(rows: Sequence[InferenceRow]) -> str:
    """For the rows timed under a forced DCT engine ("LAYER [ENGINE DCT]"): a Markdown table of that engine's ms
    against the default's for the same layer and cell, ``forced → default ms (×forced/default)``."""
    batches = sorted({r.batch for r in rows})
    cells = {(r.n, r.layer, r.batch): r for r in rows if r.runtime == "torch"}
    forced = list(dict.fromkeys((r.n, r.layer) for r in rows if r.runtime == "torch" and r.layer.endswith(" DCT]")))
    lines = ["| N | layer | " + " | ".join(f"b{b}" for b in batches) + " |", "|" + "---|" * (2 + len(batches))]
    for n, layer in forced:
        default = layer.rsplit(" [", 1)[0]
        values = []
        for b in batches:
            before, after = cells.get((n, layer, b)), cells.get((n, default, b))
            values.append("" if before is None or after is None else
                          f"{before.ms:.2g} → {after.ms:.2g} ms (×{before.ms / after.ms:.1f})")
        lines.append(f"| {n} | {layer} → default | " + " | ".join(values) + " |")
    return "\n".join(lines)
