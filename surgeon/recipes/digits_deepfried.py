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
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, finite, train


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


def run(ctx: RecipeContext, *, kinds: Sequence[str] = ("dense", "fastfood", "adaptive_fastfood", "acdc"),
        channels: Sequence[int] = (16, 32), hidden: int = 256, features: int = 1024, acdc_depth: int = 12,
        dropout: float = 0.1, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3,
        weight_decay: float = 0.0) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train one convnet per FC kind; report parameters (total and FC layer) and test error."""
    x_tr, y_tr, x_te, y_te = data.digits(ctx.seed)
    dataset = torch.utils.data.TensorDataset(x_tr, y_tr)
    steps = epochs * -(-len(x_tr) // batch_size)
    ce = nn.functional.cross_entropy
    runs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        torch.manual_seed(ctx.seed)   # same conv init for every variant
        net = DigitsConvNet(kind, channels, hidden, features, acdc_depth, dropout, seed=ctx.seed)
        fc_params = sum(p.numel() for p in net.fc.parameters())
        model = ctx.wrap(net)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        result = train(ctx, model, opt, ctx.loader(dataset, batch_size), ce, steps, description=kind,
                       eval_every=max(1, steps // 20), scheduler=sched,
                       evaluate_fn=lambda m=model: evaluate(m, x_te, y_te, ce))
        final = evaluate(model, x_te, y_te, ce)
        runs[kind] = {"test_error": finite(final["error"]), "test_loss": finite(final["loss"]),
                      "params": count_parameters(model), "trainable_params": count_parameters(model, True),
                      "fc_params": fc_params,
                      "curve": {"step": result.steps, "test_error": result.curves.get("test_error", []),
                                "train_loss": result.curves["train_loss"]}}
    summary = {k: {"test_error": r["test_error"], "params": r["params"], "fc_params": r["fc_params"]}
               for k, r in runs.items()}
    metrics = {"summary": summary, "runs": runs, "n_train": len(x_tr), "n_test": len(x_te)}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(3, width=4.4)
        plotting.curves(axes[0], {k: (r["curve"]["step"], r["curve"]["test_error"]) for k, r in runs.items()},
                        title="test error during training", ylabel="test error")
        plotting.bars(axes[1], list(runs), [r["test_error"] or 0.0 for r in runs.values()],
                      title="final test error", ylabel="error", annotate="{:.2%}")
        plotting.bars(axes[2], list(runs), [r["params"] for r in runs.values()], title="parameters (total)",
                      ylabel="parameters", annotate="{:,}")
        plotting.save(fig, path, "Digits convnet with dense / Fastfood / Adaptive Fastfood / ACDC FC (Table 3.1)")

    return metrics, draw
