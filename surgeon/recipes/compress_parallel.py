"""The full run of recipe ``compress_trained`` as parallel processes, one job per (model, structures), merged.

``python -m surgeon.recipes.compress_parallel --out runs/compress_trained [--workers 2] [--quick]``

Each job is ``run_recipe("compress_trained", overrides={"parts": [model], model: {"structures": [...]}})`` in a
process of its own (one torch thread), in its own sub-folder; a model split over several jobs is trained in each
(same seed, same dense model) and each job converts and distils only its structures. Jobs start longest first, so
two workers finish together. The merged summary, the figure and each job's wall and CPU seconds go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from surgeon.recipes.compress_trained import draw

# longest first (CPU seconds measured on one idle core): GPT-2's ACDC distillation is the longest stage
JOBS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("gpt2", ("acdc",)),
    ("gpt2", ("fastfood", "lowrank", "lowrank_at_fastfood")),
    ("vit", None),
    ("digits_mlp", None),
)


def _job(part: str, structures: Sequence[str] | None, out_dir: str, quick: bool, seed: int | None) -> dict[str, Any]:
    from surgeon.recipes.runner import run_recipe

    overrides: dict[str, Any] = {"parts": [part]}
    if structures is not None:
        overrides[part] = {"structures": list(structures)}
    start, cpu = time.perf_counter(), time.process_time()
    metrics = run_recipe("compress_trained", quick=quick, out_dir=out_dir, seed=seed, progress=False,
                         overrides=overrides)
    return {"part": part, "structures": list(structures) if structures else "all", "summary": metrics["summary"],
            "wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def merge(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary from several jobs' (a model's entries from each job that ran it; its dense entry from the
    first)."""
    merged: dict[str, Any] = {}
    for summary in summaries:
        for part, entries in summary.items():
            merged[part] = {**entries, **merged.get(part, {})}
    return merged


def run_parallel(out_dir: str | os.PathLike[str], *, jobs: Sequence[tuple[str, Sequence[str] | None]] = JOBS,
                 workers: int = 2, quick: bool = False, seed: int | None = None) -> dict[str, Any]:
    """Run ``jobs`` on ``workers`` processes; writes ``metrics.json`` (merged summary, per-job times, total wall
    time) and ``compress_trained.png`` into ``out_dir`` and returns the metrics."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")      # a fresh interpreter per job: no forked torch state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_job, part, structures, str(folder / f"job{i}-{part}"), quick, seed)
                   for i, (part, structures) in enumerate(jobs)]
        results = [future.result() for future in futures]
    summary = merge([r["summary"] for r in results])
    timing = [{k: r[k] for k in ("part", "structures", "wall_seconds", "cpu_seconds")} for r in results]
    metrics = {"summary": summary, "jobs": timing, "workers": workers, "wall_seconds": time.perf_counter() - start}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    draw(summary, str(folder / "compress_trained.png"))
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/compress_trained")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    metrics = run_parallel(args.out, workers=args.workers, quick=args.quick, seed=args.seed)
    for job in metrics["jobs"]:
        print(f"{job['part']} {job['structures']}: {job['wall_seconds']:.0f} s wall, {job['cpu_seconds']:.0f} CPU-s")
    print(f"total: {metrics['wall_seconds']:.0f} s wall on {args.workers} workers; {args.out}/metrics.json")


if __name__ == "__main__":
    main()
