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
from surgeon.recipes.engine import RecipeContext, count_parameters, finite, train, unwrap


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


def run(ctx: RecipeContext, *, n_samples: int = 10000, size: int = 32, noise_std: float = 0.01,
        depths: Sequence[int] = (1, 2, 4, 8, 16, 32), inits: dict[str, float] | None = None, steps: int = 2000,
        batch_size: int = 250, lr: float = 0.01) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train every (init, K) cascade and the dense baseline with Adam + cosine decay; report final full-data MSE."""
    inits = dict(inits or {"identity": 0.1, "zero": 0.001})
    x, y, _ = make_data(ctx, n_samples, size, noise_std)
    dataset = torch.utils.data.TensorDataset(x, y)
    mse = nn.functional.mse_loss
    solution = torch.linalg.lstsq(x.double(), y.double()).solution
    optimum = float(mse((x.double() @ solution), y.double()))

    def fit(model: nn.Module, label: str, index: int) -> dict[str, Any]:
        model = ctx.wrap(model)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        loader = ctx.loader(dataset, batch_size, epoch_seed=index)
        result = train(ctx, model, opt, loader, mse, steps, description=label, scheduler=sched)
        with torch.no_grad():
            final = float(mse(unwrap(model)(x.to(ctx.device)).cpu(), y))
        return {"final_loss": finite(final), "params": count_parameters(model),
                "curve": {"step": result.steps, "train_loss": [finite(v) for v in result.curves["train_loss"]]}}

    runs: dict[str, dict[str, Any]] = {}
    for init, std in inits.items():
        for depth in depths:
            model = build_acdc(size, depth, init, std, ctx.seed)
            # same minibatch order for every model, so curves differ only by the model
            runs[f"{init}/K={depth}"] = fit(model, f"ACDC_{depth} {init}", 0)
    runs["dense"] = fit(nn.Linear(size, size, bias=False), "dense", 0)

    summary = {init: {str(k): runs[f"{init}/K={k}"]["final_loss"] for k in depths} for init in inits}
    summary["dense"] = runs["dense"]["final_loss"]
    summary["least_squares_optimum"] = optimum
    metrics = {"summary": summary, "runs": runs}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(len(inits) + 1, width=4.6)
        for ax, (init, std) in zip(axes, inits.items(), strict=False):
            series = {f"K={k}": (runs[f"{init}/K={k}"]["curve"]["step"], runs[f"{init}/K={k}"]["curve"]["train_loss"])
                      for k in depths}
            series["dense"] = (runs["dense"]["curve"]["step"], runs["dense"]["curve"]["train_loss"])
            mean = 1.0 if init == "identity" else 0.0
            plotting.curves(ax, series, title=f"init N({mean:g}, {std:g}²)", ylabel="training MSE", logy=True)
        ax = axes[-1]
        for init in inits:
            ax.plot(list(depths), [summary[init][str(k)] or float("nan") for k in depths], marker="o", label=init)
        ax.axhline(summary["dense"] or float("nan"), color="k", ls="--", label="dense (trained)")
        ax.axhline(optimum, color="gray", ls=":", label="least squares")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (ACDC factors)")
        ax.set_ylabel("final MSE")
        ax.set_title("final loss vs depth")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        plotting.save(fig, path, f"ACDC_K regression on a {size}×{size} operator (thesis Fig. 3.4)")

    return metrics, draw
