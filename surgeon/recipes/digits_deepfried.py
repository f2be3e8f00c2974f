"""Table 3.1 in small: a convnet on 8×8 digits with its hidden FC layer dense, Fastfood, Adaptive Fastfood or ACDC.

The thesis trains LeNet on MNIST with the 800→500 FC layer replaced by a 1024- or 2048-feature Fastfood
transform (Deep Fried Convnets) and reports parameters and test error. Here the convnet is
conv(1→c1, 3) → ReLU → conv(c1→c2, 3) → ReLU → 2×2 max-pool → flatten (c2·16 features) → *FC layer* → ReLU →
dropout → dense softmax layer, trained jointly from scratch on scikit-learn's digits. The FC layer is:

- ``dense``: ``nn.Linear(F, hidden)`` (the reference model);
- ``fastfood``: non-adaptive Fastfood with ``features`` outputs (S, G, B fixed random draws, Le et al.);
- ``adaptive_fastfood``: the same with S, G, B learned (Deep Fried Convnets);
- ``acdc``: a 12-factor ACDC cascade F→F with ReLU and permutations between factors (§3.10.7.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from surgeon.layers import ACDCLinear, FastfoodLinear
from surgeon.recipes import data, plotting
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, finite, run_jobs, spread, train


class DigitsConvNet(nn.Module):
    """A LeNet-shaped convnet for 8×8 inputs whose FC layer is chosen by ``kind``."""

    def __init__(self, kind: str, channels: Sequence[int] = (16, 32), hidden: int = 256, features: int = 1024,
                 acdc_depth: int = 12, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        flat = c2 * 16
        if kind == "dense":
            fc, width = nn.Linear(flat, hidden), hidden
        elif kind in ("fastfood", "adaptive_fastfood"):
            fc, width = FastfoodLinear(flat, features, adaptive=kind == "adaptive_fastfood", seed=seed), features
        elif kind == "acdc":
            fc, width = ACDCLinear(flat, flat, depth=acdc_depth, activation="relu", seed=seed), flat
        else:
            raise ValueError(f"unknown FC kind {kind!r}")
        self.fc = fc
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


def _fixed(module: nn.Module) -> int:
    """Fixed random numbers a layer holds (floating buffers: the S, G, B draws of non-adaptive Fastfood)."""
    return sum(b.numel() for b in module.buffers() if b.is_floating_point())


def _train_one(ctx: RecipeContext, *, kind: str, seed: int, channels: Sequence[int], hidden: int, features: int,
               acdc_depth: int, dropout: float, epochs: int, batch_size: int, lr: float,
               weight_decay: float) -> dict[str, Any]:
    """One FC kind on one seed (the split, the init and the Fastfood draws all follow ``seed``)."""
    run_ctx = RecipeContext(name=ctx.name, out_dir=ctx.out_dir, seed=seed, device=ctx.device, quick=ctx.quick,
                            rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress)
    x_tr, y_tr, x_te, y_te = data.digits(seed)
    steps = epochs * -(-len(x_tr) // batch_size)
    ce = nn.functional.cross_entropy
    torch.manual_seed(seed)   # same conv init for every variant of one seed
    net = DigitsConvNet(kind, channels, hidden, features, acdc_depth, dropout, seed=seed)
    fc_learned = sum(p.numel() for p in net.fc.parameters())
    fixed = _fixed(net)
    model = run_ctx.wrap(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    result = train(run_ctx, model, opt, run_ctx.loader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size), ce,
                   steps, description=f"{kind} seed {seed}", eval_every=max(1, steps // 20), scheduler=sched,
                   evaluate_fn=lambda: evaluate(model, x_te, y_te, ce))
    final = evaluate(model, x_te, y_te, ce)
    learned = count_parameters(model)
    return {"kind": kind, "seed": seed, "test_error": finite(final["error"]),
            "test_errors": round(final["error"] * len(x_te)), "n_test": len(x_te), "test_loss": finite(final["loss"]),
            "learned_params": learned, "fixed_params": fixed, "all_params": learned + fixed,
            "fc_learned_params": fc_learned, "fc_all_params": fc_learned + _fixed(net.fc),
            "curve": {"step": result.steps, "test_error": result.curves.get("test_error", []),
                      "train_loss": result.curves["train_loss"]}}


def run(ctx: RecipeContext, *, kinds: Sequence[str] = ("dense", "fastfood", "adaptive_fastfood", "acdc"),
        seeds: Sequence[int] = (0, 1, 2, 3, 4), channels: Sequence[int] = (16, 32), hidden: int = 256,
        features: int = 1024, acdc_depth: int = 12, dropout: float = 0.1, epochs: int = 40, batch_size: int = 64,
        lr: float = 2e-3, weight_decay: float = 0.0,
        workers: int = 2) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train one convnet per FC kind and seed; report parameters (learned, fixed, all) and test errors ± spread.

    "All" parameters count the fixed random Fastfood diagonals too, as the thesis counts both Fastfood variants
    alike; integer index buffers (permutations) are not counted.
    """
    common = {"channels": list(channels), "hidden": hidden, "features": features, "acdc_depth": acdc_depth,
              "dropout": dropout, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay}
    jobs = [{"kind": k, "seed": ctx.seed + int(s), **common} for k in kinds for s in seeds]
    results = run_jobs(ctx, _train_one, jobs, workers=workers)
    runs = {k: [r for r in results if r["kind"] == k] for k in kinds}
    summary = {k: {"test_errors": spread([r["test_errors"] for r in rs]), "n_test": rs[0]["n_test"],
                   "test_error": spread([r["test_error"] for r in rs]), "all_params": rs[0]["all_params"],
                   "learned_params": rs[0]["learned_params"], "fc_all_params": rs[0]["fc_all_params"],
                   "fc_learned_params": rs[0]["fc_learned_params"]} for k, rs in runs.items()}
    metrics = {"summary": summary, "runs": runs, "seeds": list(seeds)}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(3, width=4.4)
        plotting.bands(axes[0], {k: (rs[0]["curve"]["step"], [r["curve"]["test_error"] for r in rs])
                                 for k, rs in runs.items()}, title="test error (mean, min-max over seeds)",
                       ylabel="test error")
        for i, (k, rs) in enumerate(runs.items()):
            counts = [r["test_errors"] for r in rs]
            axes[1].scatter([i] * len(counts), counts, alpha=0.6)
            axes[1].errorbar([i], [summary[k]["test_errors"]["mean"]], yerr=[summary[k]["test_errors"]["std"]],
                             fmt="_", color="black", capsize=6)
        axes[1].set_xticks(range(len(runs)))
        axes[1].set_xticklabels(list(runs), rotation=20, ha="right", fontsize=8)
        axes[1].set_title(f"test errors out of {next(iter(summary.values()))['n_test']} (each seed, mean ± sd)")
        axes[1].grid(True, axis="y", alpha=0.3)
        plotting.bars(axes[2], list(runs), [s["all_params"] for s in summary.values()],
                      title="parameters (learned + fixed)", ylabel="parameters", annotate="{:,}")
        plotting.save(fig, path, f"Digits convnet, dense / Fastfood / Adaptive Fastfood / ACDC FC (Table 3.1), "
                                 f"{len(seeds)} seeds")

    return metrics, draw
