"""Trained-model surgery end to end: dense → fit → distill, for ACDC, Fastfood and low-rank at matched sizes.

Three trained models (:mod:`surgeon.recipes.compress_tasks`): a digits MLP, a small Hugging Face GPT-2 on the
Python standard library's sources, a small timm ViT on digits. In each, the selected linear maps (MLP hidden
layers; GPT-2 block projections, HF ``Conv1D``; ViT ``qkv``/``proj``/``fc1``/``fc2``) are converted with
``init="fit"`` (closed-form, sequential fitting on calibration batches) to an ACDC cascade of the task's
``depth``, to Adaptive Fastfood, and to two low-rank layers holding, layer by layer, the parameters of the
cascade (``lowrank``) and of Fastfood (``lowrank_at_fastfood``): the honest baselines. Each is then distilled from
the dense model on unlabelled training inputs. Summary per task and structure: parameters (model, converted
layers), the task metric after the fit and after distillation, fit errors, fit and distillation times
(wall and CPU: on a shared machine the CPU seconds are what an idle core would take).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.ticker import NullFormatter
from torch import nn

from surgeon.recipes import compress_tasks, plotting
from surgeon.recipes.engine import RecipeContext, count_parameters

PARTS = ("digits_mlp", "gpt2", "vit")
STRUCTURES = ("acdc", "fastfood", "lowrank", "lowrank_at_fastfood")
# low-rank baselines and the structure whose per-layer parameter counts they match
MATCHED = {"lowrank": "acdc", "lowrank_at_fastfood": "fastfood"}
# a part's parameters that go to compress_task rather than to the model's builder
COMPRESS_OPTIONS = ("depth", "distill", "distill_by_structure", "fit", "fit_by_structure", "structures")


def matching_ranks(changes: Sequence[Any]) -> dict[str, int]:
    """Per converted layer, the largest rank whose factors and bias, ``r·(in + out) + out``, fit in the
    parameters that layer's replacement holds (at least 1)."""
    ranks = {}
    for change in changes:
        fan_in, fan_out = change.config["in_features"], change.config["out_features"]
        ranks[change.name] = max(1, (change.params_after - fan_out) // (fan_in + fan_out))
    return ranks


def _set_recompute(model: nn.Module, recompute: bool) -> None:
    """ACDC layers' backward: recompute the cascade (memory) or keep its intermediates (a third fewer DCTs)."""
    from surgeon.layers.acdc import ACDCLinear

    for module in model.modules():
        if isinstance(module, ACDCLinear):
            module.recompute = recompute


def compress(task: compress_tasks.Task, structure: str, options: dict[str, Any], distill: dict[str, Any],
             seed: int) -> dict[str, Any]:
    """Convert ``task.model`` (fit), measure, distill, measure; returns the summary entry."""
    import surgeon

    kind = "lowrank" if structure in MATCHED else structure
    start, cpu = time.perf_counter(), time.process_time()
    student = surgeon.convert(task.model, kind, init="fit", calibration=task.calibration, seed=seed, quiet=True,
                              **options)
    fit_seconds, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
    changes = surgeon.records(student)[-1].changes
    entry = {"layers": len(changes), "layer_params": sum(c.params_after for c in changes),
             "dense_layer_params": sum(c.params_before for c in changes), "params": count_parameters(student),
             "fit_errors": [c.fit_error for c in changes], "fit_seconds": fit_seconds,
             "fit_cpu_seconds": fit_cpu, "after_fit": task.metric(student)}
    _set_recompute(student, False)   # distillation's rows fit in memory; fewer transforms per step
    start, cpu = time.perf_counter(), time.process_time()
    surgeon.distill(student, task.model, task.inputs, seed=seed, quiet=True, **distill)
    entry.update(distill_seconds=time.perf_counter() - start, distill_cpu_seconds=time.process_time() - cpu,
                 after_distill=task.metric(student))
    if task.unseen_metric is not None:
        entry["after_distill_unseen"] = task.unseen_metric(student)
    _set_recompute(student, True)
    return entry


def _shape_options(task: compress_tasks.Task, structure: str, depth: int) -> dict[str, Any]:
    """The size options of ``structure``: ACDC's depth; a matched low-rank's per-layer ranks, read off the
    reference structure's layer sizes (a random-init conversion: sizes do not depend on the fit, so any subset of
    the structures can run in a process of its own)."""
    import surgeon

    if structure == "acdc":
        return {"depth": depth}
    if structure not in MATCHED:
        return {}
    reference = MATCHED[structure]
    shaped = surgeon.convert(task.model, reference, quiet=True, **_shape_options(task, reference, depth))
    return {"rank": matching_ranks(surgeon.records(shaped)[-1].changes)}


def compress_task(task: compress_tasks.Task, *, depth: int, distill: dict[str, Any],
                  distill_by_structure: dict[str, dict[str, Any]] | None = None,
                  fit: dict[str, Any] | None = None, fit_by_structure: dict[str, dict[str, Any]] | None = None,
                  seed: int = 0, structures: Sequence[str] = STRUCTURES) -> dict[str, Any]:
    """Every structure of ``structures`` on one task. ``fit`` (and per structure ``fit_by_structure``): convert
    options of the fit, e.g. ``fit_rows``, ``fit_sweeps``; ``distill`` / ``distill_by_structure`` likewise."""
    unknown = set(structures) - set(STRUCTURES)
    if unknown or not structures:
        raise ValueError(f"structures must name some of {', '.join(STRUCTURES)}; got {list(structures)!r}")
    summary: dict[str, Any] = {"metric": task.metric_name, "higher_is_better": task.higher_is_better,
                               "dense": {"params": count_parameters(task.model), "metric": task.metric(task.model)}}
    if task.unseen_metric is not None:
        summary["dense"]["metric_unseen"] = task.unseen_metric(task.model)
    for structure in (s for s in STRUCTURES if s in structures):
        options = {**(fit or {}), **(fit_by_structure or {}).get(structure, {}),
                   **_shape_options(task, structure, depth)}
        settings = {**distill, **(distill_by_structure or {}).get(structure, {})}
        summary[structure] = compress(task, structure, options, settings, seed)
    return summary


def _part(ctx: RecipeContext, build: Callable[..., compress_tasks.Task], params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    shared = {key: params.pop(key) for key in COMPRESS_OPTIONS if key in params}
    start, cpu = time.perf_counter(), time.process_time()
    task = build(ctx, **params)
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    summary = compress_task(task, seed=ctx.seed, **shared)
    summary["dense"].update(train_seconds=train_seconds, train_cpu_seconds=train_cpu)
    return summary


def run(ctx: RecipeContext, *, digits_mlp: dict[str, Any], gpt2: dict[str, Any], vit: dict[str, Any],
        parts: Sequence[str] = PARTS) -> tuple[dict[str, Any], Callable[[str], None]]:
    """``parts``: which of the three models to compress (all by default; one per process runs them in parallel)."""
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"parts must name some of {', '.join(PARTS)}; got {list(parts)!r}")
    builds = {"digits_mlp": (compress_tasks.digits_mlp, digits_mlp), "gpt2": (compress_tasks.gpt2, gpt2),
              "vit": (compress_tasks.vit, vit)}
    summary = {name: _part(ctx, *builds[name]) for name in PARTS if name in parts}

    return {"summary": summary}, lambda path: draw(summary, path)


def draw(summary: dict[str, Any], path: str) -> None:
    """The recipe's figure from its summary (also from several runs' summaries merged: one panel per model)."""
    fig, axes = plotting.figure(len(summary), width=4.6)
    for ax, (name, part) in zip(axes, summary.items(), strict=True):
        _draw_part(ax, name, part)
    plotting.save(fig, path, "dense → fit → distill")


def _draw_part(ax: Any, name: str, part: dict[str, Any]) -> None:
    """One marker per structure after the fit (hollow) and after distillation (filled), joined; dense dashed."""
    for structure in (s for s in STRUCTURES if s in part):
        entry = part[structure]
        x = entry["layer_params"]
        (line,) = ax.plot([x, x], [entry["after_fit"], entry["after_distill"]], alpha=0.5)
        ax.scatter([x], [entry["after_fit"]], facecolors="none", edgecolors=line.get_color())
        ax.scatter([x], [entry["after_distill"]], color=line.get_color(), label=structure)
    ax.axhline(part["dense"]["metric"], color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())   # the minor ticks' labels overlap on a short log axis
    if not part["higher_is_better"]:
        ax.set_yscale("log")
    ax.set_title(f"{name} (hollow: after fit; filled: distilled)", fontsize=8)
    ax.set_xlabel("parameters in the converted layers")
    ax.set_ylabel(part["metric"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
