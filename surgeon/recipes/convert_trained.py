"""Post-training surgery: train a dense MLP on digits, ``convert(..., init="fit")`` it to ACDC, fine-tune briefly.

Reports test accuracy and parameter count at three points — the trained dense model, right after conversion
(each hidden Linear fitted by its ACDC replacement on calibration batches of real activations), and after a
short fine-tuning of the converted model — plus the per-layer fit errors from the surgery record. The output
layer stays dense (``convert``'s default, as in the thesis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from surgeon.recipes import data, plotting
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, train, unwrap


def build_mlp(widths: Sequence[int]) -> nn.Sequential:
    """``64 → widths… → 10`` with ReLU between layers."""
    layers: list[nn.Module] = []
    sizes = [64, *widths]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 10))


def run(ctx: RecipeContext, *, widths: Sequence[int] = (256, 256), epochs: int = 30, finetune_epochs: int = 5,
        batch_size: int = 64, lr: float = 2e-3, finetune_lr: float = 5e-4, linear: str = "acdc",
        depth: int | str = 12, max_error: float | None = None, calibration_batches: int = 8,
        fit_steps: int = 300) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train → convert (init="fit") → fine-tune; accuracy and size at each stage."""
    from surgeon.surgery.convert import convert

    x_tr, y_tr, x_te, y_te = data.digits(ctx.seed, image=False)
    dataset = torch.utils.data.TensorDataset(x_tr, y_tr)
    per_epoch = -(-len(x_tr) // batch_size)
    ce = nn.functional.cross_entropy
    torch.manual_seed(ctx.seed)
    model = ctx.wrap(build_mlp(widths))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = train(ctx, model, opt, ctx.loader(dataset, batch_size), ce, epochs * per_epoch, description="dense",
                  eval_every=per_epoch, evaluate_fn=lambda: evaluate(model, x_te, y_te, ce))
    stages = {"dense": {"test_accuracy": 1 - evaluate(model, x_te, y_te, ce)["error"],
                        "params": count_parameters(model)}}

    # every rank converts the same (synchronised) weights with the same seed and calibration data
    calibration = [x_tr[i * batch_size:(i + 1) * batch_size].to(ctx.device) for i in range(calibration_batches)]
    options: dict[str, Any] = {"depth": depth} if linear == "acdc" else {}
    if max_error is not None:
        options["max_error"] = max_error
    converted = convert(unwrap(model).cpu().to(ctx.device), linear=linear, init="fit", calibration=calibration,
                        seed=ctx.seed, fit_steps=fit_steps, quiet=True, **options)
    records = getattr(converted, "surgeon_records", [])
    changes = [{"name": ch.name, "old": ch.old, "new": ch.new, "params_before": ch.params_before,
                "params_after": ch.params_after, "fit_error": ch.fit_error}
               for rec in records for ch in rec.changes]
    stages["converted"] = {"test_accuracy": 1 - evaluate(converted, x_te, y_te, ce)["error"],
                           "params": count_parameters(converted)}

    tuned = ctx.wrap(converted)
    opt = torch.optim.Adam(tuned.parameters(), lr=finetune_lr)
    second = train(ctx, tuned, opt, ctx.loader(dataset, batch_size, epoch_seed=1), ce,
                   max(1, finetune_epochs * per_epoch), description="fine-tune", eval_every=max(1, per_epoch // 2),
                   evaluate_fn=lambda: evaluate(tuned, x_te, y_te, ce))
    stages["finetuned"] = {"test_accuracy": 1 - evaluate(tuned, x_te, y_te, ce)["error"],
                           "params": count_parameters(tuned)}
    metrics = {"summary": stages, "changes": changes,
               "curves": {"dense": {"step": first.steps, "test_error": first.curves.get("test_error", [])},
                          "finetune": {"step": second.steps, "test_error": second.curves.get("test_error", [])}}}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        offset = first.steps[-1] if first.steps else 0
        series = {"dense training": (first.steps, [1 - e for e in first.curves.get("test_error", [])]),
                  "converted, fine-tuning": ([offset + s for s in second.steps],
                                             [1 - e for e in second.curves.get("test_error", [])])}
        plotting.curves(axes[0], series, title="test accuracy", ylabel="accuracy")
        axes[0].scatter([offset], [stages["converted"]["test_accuracy"]], color="red", zorder=3,
                        label="right after convert")
        axes[0].legend(fontsize=8)
        labels = list(stages)
        plotting.bars(axes[1], labels, [stages[k]["params"] for k in labels], title="parameters",
                      ylabel="parameters", annotate="{:,}")
        plotting.save(fig, path, f"Digits MLP: dense → convert(linear={linear!r}, init='fit') → fine-tune")

    return metrics, draw
