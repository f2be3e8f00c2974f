"""Load a recipe file and run it: ``run_recipe("acdc_regression", quick=True)``.

A recipe file (``recipes/<name>.yaml``) names its library entry point and parameters::

    name: acdc_regression
    entry: surgeon.recipes.acdc_regression:run
    params: {...}            # the full-scale experiment
    quick: {...}             # overrides merged into params when quick=True (the tests' setting)

The entry point is called as ``entry(ctx, **params)`` and returns ``(metrics, figure_fn)``: a JSON-able dict and
a callable that draws the plot to a path. The runner writes ``metrics.json`` and ``<name>.png`` to the output
folder (default ``runs/<name>/``) on rank 0 only. Under ``torchrun`` it joins the process group (gloo on CPU,
nccl on CUDA) and tears it down afterwards.
"""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from surgeon.recipes.engine import (
    RecipeContext,
    distributed_env,
    init_distributed,
    resolve_device,
    seed_everything,
)


def _bundled_recipes() -> Path:
    """The package data ``surgeon.recipe_files`` (the top-level ``recipes/`` folder, mapped in pyproject); a source
    tree whose editable install predates that mapping reads the folder beside the package instead."""
    try:
        return Path(str(importlib.resources.files("surgeon.recipe_files")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "recipes"


#: Where the bundled recipe files live (in a wheel as in a checkout).
RECIPES_DIR = _bundled_recipes()


def list_recipes(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the recipe files in ``directory`` (default: the repository's ``recipes/``)."""
    folder = Path(directory) if directory is not None else RECIPES_DIR
    return sorted(p.stem for p in folder.glob("*.yaml"))


def recipe_path(path_or_name: str | os.PathLike[str]) -> Path:
    """Resolve a recipe name (``"acdc_regression"``) or a path to a YAML file."""
    candidate = Path(path_or_name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    named = RECIPES_DIR / f"{path_or_name}.yaml"
    if named.is_file():
        return named
    raise FileNotFoundError(f"no recipe {str(path_or_name)!r}; known recipes: {', '.join(list_recipes())}")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (override wins); lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_recipe(path_or_name: str | os.PathLike[str], quick: bool = False) -> dict[str, Any]:
    """Parse a recipe file; with ``quick`` merge its ``quick:`` block into ``params``. Validates the keys."""
    path = recipe_path(path_or_name)
    with open(path, encoding="utf-8") as handle:
        spec = yaml.safe_load(handle)
    if not isinstance(spec, dict) or "entry" not in spec:
        raise ValueError(f"{path}: a recipe needs a mapping with an 'entry: module:function' key")
    unknown = set(spec) - {"name", "description", "thesis", "entry", "params", "quick", "seed"}
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {sorted(unknown)}")
    spec.setdefault("name", path.stem)
    params = dict(spec.get("params") or {})
    if quick:
        params = _merge(params, spec.get("quick") or {})
    spec["params"] = params
    spec["path"] = str(path)
    return spec


def resolve_entry(entry: str) -> Any:
    """Import ``"package.module:function"``."""
    module_name, _, attr = entry.partition(":")
    if not attr:
        raise ValueError(f"entry {entry!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attr)


def json_safe(value: Any) -> Any:
    """Nested metrics with every non-finite float replaced by None (strict JSON has no NaN/inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the recipe's worker processes): on a busy machine
    ``cpu_seconds`` / cores is what the run would take on that many idle cores, where wall ``seconds`` is inflated."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _progress(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def run_recipe(path_or_name: str | os.PathLike[str], *, quick: bool = False,
               out_dir: str | os.PathLike[str] | None = None, seed: int | None = None,
               device: str | torch.device | None = None, progress: bool = True,
               overrides: dict[str, Any] | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Run one recipe end to end and return its metrics (every rank returns the same dict).

    ``quick`` uses the recipe's ``quick:`` overrides (≤ 30 s on a laptop CPU); ``out_dir`` defaults to
    ``runs/<name>/`` (``runs/<name>-quick/`` in quick mode); ``seed`` overrides the recipe's seed (default 0);
    ``device`` defaults to this rank's GPU when CUDA is available. ``overrides`` are merged into the parameters
    last. On rank 0 the run writes ``metrics.json`` and ``<name>.png`` into ``out_dir``. ``threads`` sets torch's
    intra-op CPU threads for the run (restored afterwards; ``None`` leaves it alone): the recipes' tensors are
    tiny, and several threads per process only contend (badly so on a shared or torchrun-ed machine).
    """
    spec = load_recipe(path_or_name, quick=quick)
    params = _merge(spec["params"], overrides or {})
    name = spec["name"]
    run_seed = int(spec.get("seed", 0) if seed is None else seed)
    folder = Path(out_dir) if out_dir is not None else Path("runs") / (f"{name}-quick" if quick else name)
    rank, world, local_rank = distributed_env()
    dev = resolve_device(device, local_rank)
    created_group = init_distributed(dev)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        seed_everything(run_seed)
        entry = resolve_entry(spec["entry"])
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        with _progress(progress and rank == 0) as bar:
            ctx = RecipeContext(name=name, out_dir=str(folder), seed=run_seed, device=dev, quick=quick,
                                rank=rank, world_size=world, progress=bar)
            metrics, figure = entry(ctx, **params)
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        metrics = json_safe({
            "recipe": name, "entry": spec["entry"], "thesis": spec.get("thesis", ""), "quick": quick,
            "seed": run_seed, "device": str(dev), "world_size": world, "seconds": round(elapsed, 2),
            "cpu_seconds": round(cpu, 2),
            "torch": torch.__version__, "python": platform.python_version(), "params": params, **metrics,
        })
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            plot_path = folder / f"{name}.png"
            figure(str(plot_path))
            metrics["plot"] = str(plot_path)
            with open(folder / "metrics.json", "w", encoding="utf-8") as handle:
                json.dump(metrics, handle, indent=2, allow_nan=False)
        if world > 1 and dist.is_initialized():
            dist.barrier()   # rank 0 has written its files before anybody returns
        metrics.setdefault("plot", str(folder / f"{name}.png"))
        return metrics
    finally:
        torch.set_num_threads(previous_threads)
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """``python -m surgeon.recipes.runner NAME [--quick] [--out DIR] [--seed N] [--device D]`` (torchrun-able)."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a surgeon recipe.")
    parser.add_argument("recipe", help="recipe name or path to its YAML file")
    parser.add_argument("--quick", action="store_true", help="use the recipe's quick overrides")
    parser.add_argument("--out", default=None, help="output folder (default runs/<name>/)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    metrics = run_recipe(args.recipe, quick=args.quick, out_dir=args.out, seed=args.seed, device=args.device,
                         progress=not args.no_progress)
    if distributed_env()[0] == 0:
        print(json.dumps(metrics.get("summary", {}), indent=2))


if __name__ == "__main__":
    main()
