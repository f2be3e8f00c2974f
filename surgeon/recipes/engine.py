"""Shared machinery for recipes: run context, distributed setup, data loaders, the training loop.

Every recipe receives a :class:`RecipeContext`. It hides whether the run is a single process or one rank of a
``torchrun`` job: models go through :meth:`RecipeContext.wrap` (DistributedDataParallel when distributed),
loaders through :meth:`RecipeContext.loader` (a ``DistributedSampler`` shards the training set), and only rank 0
shows progress or writes files.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a recipe run is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None`` picks CUDA (this rank's GPU) when available, else CPU."""
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment ``torchrun`` sets; ``(0, 1, 0)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_distributed(device: torch.device) -> bool:
    """Join the process group if launched by torchrun. Returns True when this call created the group."""
    _, world, _ = distributed_env()
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


class Tracker:
    """A progress-bar task (rich) on rank 0; a no-op elsewhere, so recipes never branch on rank."""

    def __init__(self, progress: Any | None, description: str, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=total) if progress is not None else None

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, **fields)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, visible=False)


@dataclass
class RecipeContext:
    """What a recipe's entry point gets besides its parameters."""

    name: str
    out_dir: str
    seed: int
    device: torch.device
    quick: bool = False
    rank: int = 0
    world_size: int = 1
    progress: Any | None = None      # a rich.progress.Progress on rank 0 when progress is wanted
    log: list[str] = field(default_factory=list)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def track(self, description: str, total: int) -> Tracker:
        """A progress task; shown only on rank 0 and only when the runner was asked for progress."""
        return Tracker(self.progress if self.is_main else None, description, total)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed; identical on every rank, so generated data agree."""
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1000 + offset)
        return gen

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Move to the device and, when distributed, wrap in DistributedDataParallel (gradients all-reduced)."""
        model = model.to(self.device)
        if not self.distributed or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)

    def loader(self, dataset: TensorDataset, batch_size: int, shuffle: bool = True,
               epoch_seed: int = 0) -> DataLoader:
        """A training loader; under DDP each rank sees a disjoint shard of size ≈ len/world_size.

        ``batch_size`` is the *global* batch: each rank takes ``batch_size // world_size`` examples so that a run
        with 2 processes takes the same number of optimiser steps with the same effective batch as one process.
        """
        local = max(1, batch_size // self.world_size)
        if self.distributed:
            sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle,
                                         seed=self.seed + epoch_seed)
            return DataLoader(dataset, batch_size=local, sampler=sampler, drop_last=False)
        gen = torch.Generator()
        gen.manual_seed(self.seed + epoch_seed)
        # Batches fetched by index lists (one tensor gather per batch, not one __getitem__ per example); the same
        # batches in the same order as DataLoader(batch_size=local, shuffle=shuffle, generator=gen).
        sampler = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(sampler, local, drop_last=False), batch_size=None,
                          generator=gen)

    def mean(self, value: float) -> float:
        """Average a scalar over ranks (identity in a single process)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as fixed permutations or random Fastfood draws excluded)."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad or not trainable_only)


def _epochs(loader: DataLoader) -> Iterator[int]:
    epoch = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yield epoch
        epoch += 1


def iterate_batches(loader: DataLoader, steps: int) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Yield ``(step, batch)`` for exactly ``steps`` optimiser steps, cycling through epochs (reshuffled)."""
    step = 0
    for _ in _epochs(loader):
        for batch in loader:
            if step >= steps:
                return
            yield step, batch
            step += 1
        if step >= steps:
            return


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn,
             batch_size: int = 1024, classify: bool = True) -> dict[str, float]:
    """Loss (and error rate when ``classify``) of ``model`` on a full tensor set.

    Every rank evaluates the whole (small) evaluation set with the unwrapped model; parameters are identical on
    all ranks after a DDP step, so the numbers agree without a collective.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = next(iter(net.parameters())).device
    total_loss, wrong, count = 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size].to(device)
        out = net(x)
        total_loss += float(loss_fn(out, y).item()) * len(x)
        if classify:
            wrong += int((out.argmax(-1) != y).sum().item())
        count += len(x)
    net.train(was_training)
    result = {"loss": total_loss / max(count, 1)}
    if classify:
        result["error"] = wrong / max(count, 1)
    return result


@dataclass
class TrainResult:
    """Curves recorded by :func:`train`: ``steps`` and, per key, one value per recorded point."""

    steps: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    skipped: int = 0     # updates skipped because the loss was not finite

    def add(self, step: int, **values: float) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.curves.setdefault(key, []).append(float(value))


def train(ctx: RecipeContext, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
          loss_fn: LossFn, steps: int, *, description: str = "train", eval_every: int = 0,
          evaluate_fn: Callable[[], dict[str, float]] | None = None,
          on_step: Callable[[int, float], None] | None = None, clip_norm: float | None = None,
          scheduler: Any | None = None) -> TrainResult:
    """The shared loop: ``steps`` optimiser updates, training loss averaged over ranks and recorded.

    ``on_step(step, loss)`` runs after each update with the rank-averaged loss (e.g. an annealer: every rank must
    anneal identically, so it is fed the all-reduced loss). ``evaluate_fn`` is called every ``eval_every`` steps
    and at the end; its values are recorded next to the running training loss.
    """
    result = TrainResult()
    tracker = ctx.track(description, steps)
    running, seen = 0.0, 0
    record_every = eval_every if eval_every > 0 else max(1, steps // 50)
    model.train()
    for step, batch in iterate_batches(loader, steps):
        x, y = (t.to(ctx.device) for t in batch)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        # A non-finite loss (e.g. heavy injected noise overflowing an LSTM state) would poison every parameter
        # through NaN gradients: skip that update instead, on every rank alike (DDP needs matching backwards).
        bad = not bool(torch.isfinite(loss))
        if ctx.distributed:
            bad = ctx.mean(float(bad)) > 0
        if bad:
            result.skipped += 1
            tracker.advance()
            continue
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = ctx.mean(loss.item()) if (on_step is not None or (step + 1) % record_every == 0) else loss.item()
        if on_step is not None:
            on_step(step, value)
        running, seen = running + loss.item(), seen + 1
        if (step + 1) % record_every == 0 or step + 1 == steps:
            point = {"train_loss": ctx.mean(running / max(seen, 1))}
            if evaluate_fn is not None and (eval_every > 0 or step + 1 == steps):
                point.update({f"test_{k}": v for k, v in evaluate_fn().items()})
            result.add(step + 1, **point)
            running, seen = 0.0, 0
            tracker.advance(0, description=f"{description} loss={point['train_loss']:.4g}")
        tracker.advance()
    tracker.done()
    return result


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_jobs(ctx: RecipeContext, fn: Callable[..., Any], jobs: list[dict[str, Any]], workers: int = 1) -> list[Any]:
    """``[fn(ctx, **job) for job in jobs]``, in ``workers`` processes (one CPU thread each) when ``workers > 1``.

    Independent trainings (variants × seeds) are what a recipe repeats; on a 2-core machine two processes halve the
    wall time. ``fn`` must be a module-level function; each result is a picklable value. Runs in this process when
    distributed, when ``workers <= 1`` or for a single job. Jobs seed themselves (from their arguments), so the
    results do not depend on the number of workers.
    """
    if workers <= 1 or len(jobs) <= 1 or ctx.distributed:
        return [fn(ctx, **job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    light = RecipeContext(name=ctx.name, out_dir=ctx.out_dir, seed=ctx.seed, device=ctx.device, quick=ctx.quick)
    tracker = ctx.track(f"{len(jobs)} runs in {workers} processes", len(jobs))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        futures = [pool.submit(fn, light, **job) for job in jobs]
        results = []
        for future in futures:
            results.append(future.result())
            tracker.advance()
    tracker.done()
    return results


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, standard deviation, min and max over seeds (None entries, e.g. never reached, counted apart)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "missing": len(values)}
    return {"mean": float(np.mean(known)), "std": float(np.std(known, ddof=1)) if len(known) > 1 else 0.0,
            "min": min(known), "max": max(known), "n": len(known), "missing": len(values) - len(known)}


def fall_over_last_quarter(curves: list[list[float | None]]) -> float | None:
    """Mean over seeds of (value at 3/4 of the run) / (final value) of recorded curves: 1.0 = flat over the last
    quarter (converged at this budget), 2.0 = it still halved. None when no curve has both values."""
    ratios = []
    for c in curves:
        if c and c[-1] and c[(3 * len(c)) // 4 - 1]:
            ratios.append(c[(3 * len(c)) // 4 - 1] / c[-1])
    return sum(ratios) / len(ratios) if ratios else None


def finite(value: float) -> float | None:
    """JSON-safe float: NaN/inf become None (json.dump would write invalid JSON otherwise)."""
    return float(value) if value is not None and math.isfinite(value) else None
