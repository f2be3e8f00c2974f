"""Fig. 3.4: fitting a dense 32×32 operator with linear ACDC_K cascades, identity vs zero-mean initialisation.

Data (eq. 3.33): ``Y = X W_true + ε`` with X (n×N) and W_true (N×N) entries U[0, 1], ε ~ N(0, 1e-4). Models:
ACDC_K = Π_k A_k C D_k C⁻¹ for each K (a *linear* cascade: no nonlinearity and no permutation, as in the
regression experiment), initialised either with diagonals N(1, σ²), σ = 0.1 (identity plus noise, left panel of
Fig. 3.4), or zero-mean N(0, σ²), σ = 1e-3 (right panel, a "standard" init); plus a dense ``nn.Linear`` trained
the same way and the least-squares optimum. The thesis' claim: with the identity init the loss falls as K grows;
with the zero-mean init deep cascades do not train.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from surgeon.layers import ACDCLinear
from surgeon.recipes import plotting
from surgeon.recipes.engine import (
    RecipeContext,
    count_parameters,
    fall_over_last_quarter,
    finite,
    run_jobs,
    spread,
    train,
    unwrap,
)


def make_data(ctx: RecipeContext, n_samples: int, size: int, noise_std: float) -> tuple[torch.Tensor, ...]:
    """``(X, Y, W_true)`` from the run seed (identical on every rank)."""
    gen = ctx.generator(offset=1)
    x = torch.rand(n_samples, size, generator=gen)
    w = torch.rand(size, size, generator=gen)
    y = x @ w + noise_std * torch.randn(n_samples, size, generator=gen)
    return x, y, w


def build_acdc(size: int, depth: int, init: str, init_std: float, seed: int) -> ACDCLinear:
    """A linear ACDC_K cascade with ``init`` = "identity" (N(1, σ²) diagonals) or "zero" (N(0, σ²))."""
    layer = ACDCLinear(size, size, depth=depth, bias=False, activation=None, permute=False, init_std=init_std,
                       seed=seed)
    if init == "zero":
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            layer.a.copy_(torch.randn(layer.a.shape, generator=gen) * init_std)
            layer.d.copy_(torch.randn(layer.d.shape, generator=gen) * init_std)
    elif init != "identity":
        raise ValueError(f"init must be 'identity' or 'zero', got {init!r}")
    return layer


def _fit_one(ctx: RecipeContext, *, model_name: str, seed: int, n_samples: int, size: int, noise_std: float,
             std: float, steps: int, batch_size: int, lr: float) -> dict[str, Any]:
    """Train one model (``"dense"`` or ``"<init>/K=<depth>"``) on the data of ``seed``; full-data MSE curve."""
    run_ctx = RecipeContext(name=ctx.name, out_dir=ctx.out_dir, seed=seed, device=ctx.device, quick=ctx.quick,
                            rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress)
    x, y, _ = make_data(run_ctx, n_samples, size, noise_std)
    mse = nn.functional.mse_loss
    if model_name == "dense":
        torch.manual_seed(seed)
        net: nn.Module = nn.Linear(size, size, bias=False)
    else:
        init, _, depth = model_name.partition("/K=")
        net = build_acdc(size, int(depth), init, std, seed)
    model = run_ctx.wrap(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    # same minibatch order for every model of a seed, so curves differ only by the model
    loader = run_ctx.loader(torch.utils.data.TensorDataset(x, y), batch_size)

    def full_mse() -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(mse(unwrap(model)(x.to(run_ctx.device)).cpu(), y))}

    result = train(run_ctx, model, opt, loader, mse, steps, description=f"{model_name} seed {seed}",
                   eval_every=max(1, steps // 40), scheduler=sched, evaluate_fn=full_mse)
    curve = [finite(v) for v in result.curves["test_mse"]]
    solution = torch.linalg.lstsq(x.double(), y.double()).solution
    return {"model": model_name, "seed": seed, "final_loss": curve[-1], "params": count_parameters(model),
            "least_squares_optimum": float(mse(x.double() @ solution, y.double())),
            "curve": {"step": result.steps, "train_loss": curve}}


def run(ctx: RecipeContext, *, n_samples: int = 10000, size: int = 32, noise_std: float = 0.01,
        depths: Sequence[int] = (1, 2, 4, 8, 16, 32), inits: dict[str, float] | None = None,
        seeds: Sequence[int] = (0, 1, 2), steps: int = 6000, batch_size: int = 250, lr: float = 0.01,
        workers: int = 2) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train every (init, K) cascade and the dense baseline on every seed (Adam + cosine decay, the same budget
    for all); report the final full-data MSE, mean ± spread, and how much each still fell over the last quarter."""
    inits = dict(inits or {"identity": 0.1, "zero": 0.001})
    names = [f"{init}/K={k}" for init in inits for k in depths] + ["dense"]
    common = {"n_samples": n_samples, "size": size, "noise_std": noise_std, "steps": steps,
              "batch_size": batch_size, "lr": lr}
    jobs = [{"model_name": n, "seed": ctx.seed + int(s), "std": inits.get(n.partition("/")[0], 0.0), **common}
            for n in names for s in seeds]
    results = run_jobs(ctx, _fit_one, jobs, workers=workers)
    runs = {n: [r for r in results if r["model"] == n] for n in names}

    summary: dict[str, Any] = {init: {str(k): spread([r["final_loss"] for r in runs[f"{init}/K={k}"]])
                                      for k in depths} for init in inits}
    summary["dense"] = spread([r["final_loss"] for r in runs["dense"]])
    summary["least_squares_optimum"] = spread([r["least_squares_optimum"] for r in runs["dense"]])
    convergence = {n: fall_over_last_quarter([r["curve"]["train_loss"] for r in rs]) for n, rs in runs.items()}
    metrics = {"summary": summary, "runs": runs, "seeds": list(seeds), "fall_over_last_quarter": convergence}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(len(inits) + 1, width=4.6)
        step = runs["dense"][0]["curve"]["step"]
        for ax, (init, std) in zip(axes, inits.items(), strict=False):
            series = {f"K={k}": (step, [r["curve"]["train_loss"] for r in runs[f"{init}/K={k}"]]) for k in depths}
            series["dense"] = (step, [r["curve"]["train_loss"] for r in runs["dense"]])
            mean = 1.0 if init == "identity" else 0.0
            plotting.bands(ax, series, title=f"init N({mean:g}, {std:g}²)", ylabel="training MSE", logy=True)
        ax = axes[-1]
        for init in inits:
            stats = [summary[init][str(k)] for k in depths]
            ax.errorbar(list(depths), [st["mean"] or float("nan") for st in stats],
                        yerr=[[(st["mean"] or 0) - (st["min"] or 0) for st in stats],
                              [(st["max"] or 0) - (st["mean"] or 0) for st in stats]], marker="o", capsize=3,
                        label=init)
        ax.axhline(summary["dense"]["mean"] or float("nan"), color="k", ls="--", label="dense (trained)")
        ax.axhline(summary["least_squares_optimum"]["mean"], color="gray", ls=":", label="least squares")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (ACDC factors)")
        ax.set_ylabel("final MSE (mean, min-max)")
        ax.set_title("final loss vs depth")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        plotting.save(fig, path, f"ACDC_K regression on a {size}×{size} operator (thesis Fig. 3.4), "
                                 f"{len(seeds)} seeds, {steps} updates each")

    return metrics, draw
