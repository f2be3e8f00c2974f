"""Trained-model surgery end to end: dense → fit → distill, for ACDC, Fastfood and low-rank at matched sizes.

A dense MLP ``64 → widths… → 10`` is trained on scikit-learn's digits. Its hidden Linears are converted with
``init="fit"`` (closed-form, sequential fitting on calibration batches of training inputs) to an ACDC cascade of
depth ``depth``, to Adaptive Fastfood, and to a low-rank layer holding the same parameters per layer as the
cascade (the honest baseline); each is then distilled from the dense model on the training inputs only (no
labels) for ``distill_steps`` steps. Test accuracy, parameters, fit and distillation times per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from surgeon.recipes import data, plotting
from surgeon.recipes.convert_trained import build_mlp
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, train, unwrap


def _matched_ranks(model: nn.Sequential, depth: int) -> dict[str, int]:
    """Per hidden Linear, the rank whose factors hold what an ACDC cascade of ``depth`` holds (3·depth·N)."""
    ranks = {}
    for name, layer in list(model.named_children())[:-1]:
        if isinstance(layer, nn.Linear):
            acdc = 3 * depth * max(layer.in_features, layer.out_features)
            ranks[name] = max(1, (acdc - layer.out_features) // (layer.in_features + layer.out_features))
    return ranks


def run(ctx: RecipeContext, *, widths: Sequence[int] = (256, 256, 256), epochs: int = 40, batch_size: int = 64,
        lr: float = 2e-3, depth: int = 12, calibration_batches: int = 16, distill_steps: int = 900,
        distill_lr: float = 3e-3, distill_batch: int = 128, kinds: Sequence[str] = ("acdc", "fastfood", "lowrank")
        ) -> tuple[dict[str, Any], Callable[[str], None]]:
    import surgeon

    x_tr, y_tr, x_te, y_te = data.digits(ctx.seed, image=False)
    ce = nn.functional.cross_entropy
    torch.manual_seed(ctx.seed)
    model = ctx.wrap(build_mlp(widths))
    per_epoch = -(-len(x_tr) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(ctx, model, opt, ctx.loader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size), ce,
          epochs * per_epoch, description="dense")
    dense = unwrap(model).eval()

    def accuracy(m: nn.Module) -> float:
        return 1 - evaluate(m, x_te, y_te, ce)["error"]

    summary: dict[str, Any] = {"dense": {"params": count_parameters(dense), "test_accuracy": accuracy(dense)}}
    calibration = [x_tr[i * batch_size:(i + 1) * batch_size] for i in range(calibration_batches)]
    options = {"acdc": {"depth": depth}, "fastfood": {}, "lowrank": {"rank": _matched_ranks(dense, depth)}}
    for kind in kinds:
        start = time.perf_counter()
        student = surgeon.convert(dense, kind, init="fit", calibration=calibration, seed=ctx.seed, quiet=True,
                                  **options[kind])
        fit_s = time.perf_counter() - start
        fitted = accuracy(student)
        errors = [c.fit_error for c in surgeon.records(student)[-1].changes]
        start = time.perf_counter()
        surgeon.distill(student, dense, x_tr, steps=distill_steps, lr=distill_lr, batch_size=distill_batch,
                        seed=ctx.seed, quiet=True)
        summary[kind] = {"params": count_parameters(student), "fit_errors": errors, "fit_seconds": fit_s,
                         "after_fit": fitted, "distill_seconds": time.perf_counter() - start,
                         "after_distill": accuracy(student)}
    metrics = {"summary": summary}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        labels = list(summary)
        fit = [summary[k].get("after_fit", summary[k]["test_accuracy"] if k == "dense" else 0) for k in labels]
        final = [summary[k].get("after_distill", summary[k].get("test_accuracy", 0)) for k in labels]
        plotting.bars(axes[0], [f"{k}\nfit" for k in labels] + [f"{k}\ndistilled" for k in labels[1:]],
                      fit + final[1:], title="test accuracy", ylabel="accuracy", annotate="{:.3f}")
        plotting.bars(axes[1], labels, [summary[k]["params"] for k in labels], title="parameters (model)",
                      ylabel="parameters", annotate="{:,}")
        plotting.save(fig, path, "Digits MLP: dense → fit → distill")

    return metrics, draw
