"""Trained-model surgery end to end: dense → fit → distill, for ACDC, Fastfood and low-rank at matched sizes.

A dense MLP ``64 → widths… → 10`` is trained on scikit-learn's digits. Its hidden Linears are converted with
``init="fit"`` (closed-form, sequential fitting on calibration batches of training inputs) to an ACDC cascade of
depth ``depth``, to Adaptive Fastfood, and to a low-rank layer holding the same parameters per layer as the
cascade (the honest baseline); each is then distilled from the dense model on the training inputs only (no
labels) for ``distill_steps`` steps. Test accuracy, parameters, fit and distillation times per stage.

With ``gpt2_steps > 0`` a small Hugging Face GPT-2 (built offline from a config, byte-level vocabulary) is also
trained on the Python standard library's own source files, every block projection (HF ``Conv1D``) converted at
about a quarter of its parameters (ACDC depth ``gpt2_depth``, Fastfood, low-rank ``ratio=0.25``) and distilled;
the metric is held-out perplexity (summary key ``"gpt2"``).
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


def stdlib_bytes(files: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) rows of ``length`` bytes from the first ``files`` standard-library modules, shuffled."""
    paths = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:files]
    text = b"".join(Path(path).read_bytes() for path in paths)
    tokens = torch.tensor(list(text), dtype=torch.long)
    rows = tokens[: len(tokens) // length * length].view(-1, length)
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))]
    held = max(1, rows.shape[0] // 10)
    return rows[held:], rows[:held]


@torch.no_grad()
def perplexity(model: nn.Module, rows: torch.Tensor) -> float:
    model.eval()
    total = sum(float(model(part, labels=part).loss) * part.numel() for part in rows.split(64))
    return math.exp(total / rows.numel())


def run_gpt2(ctx: RecipeContext, *, steps: int, depth: int, distill_steps: int, files: int = 60, length: int = 64,
             width: int = 128, layers: int = 2, kinds: Sequence[str] = ("acdc", "fastfood", "lowrank")
             ) -> dict[str, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    import surgeon

    train_rows, test_rows = stdlib_bytes(files, length, ctx.seed)
    torch.manual_seed(ctx.seed)
    config = GPT2Config(vocab_size=256, n_positions=length, n_embd=width, n_layer=layers, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    dense = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(dense.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(ctx.seed)
    dense.train()
    for _ in range(steps):
        batch = train_rows[torch.randint(0, train_rows.shape[0], (32,), generator=gen)]
        loss = dense(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    dense.eval()
    summary: dict[str, Any] = {"dense": {"perplexity": perplexity(dense, test_rows)}}
    calibration = [train_rows[i:i + 32] for i in range(0, 256, 32)]
    options = {"acdc": {"depth": depth}, "fastfood": {}, "lowrank": {"ratio": 0.25}}
    for kind in kinds:
        start = time.perf_counter()
        student = surgeon.convert(dense, kind, init="fit", calibration=calibration, seed=ctx.seed, quiet=True,
                                  **options[kind])
        fit_s = time.perf_counter() - start
        changes = surgeon.records(student)[-1].changes
        fitted = perplexity(student, test_rows)
        start = time.perf_counter()
        surgeon.distill(student, dense, train_rows[:4096], steps=distill_steps, lr=2e-3, batch_size=32,
                        seed=ctx.seed, quiet=True)
        summary[kind] = {"layers": len(changes), "layer_params": sum(c.params_after for c in changes),
                         "dense_layer_params": sum(c.params_before for c in changes), "fit_seconds": fit_s,
                         "after_fit": fitted, "distill_seconds": time.perf_counter() - start,
                         "after_distill": perplexity(student, test_rows)}
    return summary


def run(ctx: RecipeContext, *, widths: Sequence[int] = (256, 256, 256), epochs: int = 40, batch_size: int = 64,
        lr: float = 2e-3, depth: int = 12, calibration_batches: int = 16, distill_steps: int = 900,
        distill_lr: float = 3e-3, distill_batch: int = 128, kinds: Sequence[str] = ("acdc", "fastfood", "lowrank"),
        gpt2_steps: int = 0, gpt2_depth: int = 10, gpt2_distill_steps: int = 150
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
    if gpt2_steps > 0:
        summary["gpt2"] = run_gpt2(ctx, steps=gpt2_steps, depth=gpt2_depth, distill_steps=gpt2_distill_steps,
                                   kinds=kinds)
    metrics = {"summary": summary}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        labels = [k for k in summary if k != "gpt2"]
        fit = [summary[k].get("after_fit", summary[k]["test_accuracy"] if k == "dense" else 0) for k in labels]
        final = [summary[k].get("after_distill", summary[k].get("test_accuracy", 0)) for k in labels]
        plotting.bars(axes[0], [f"{k}\nfit" for k in labels] + [f"{k}\ndistilled" for k in labels[1:]],
                      fit + final[1:], title="test accuracy", ylabel="accuracy", annotate="{:.3f}")
        plotting.bars(axes[1], labels, [summary[k]["params"] for k in labels], title="parameters (model)",
                      ylabel="parameters", annotate="{:,}")
        plotting.save(fig, path, "Digits MLP: dense → fit → distill")

    return metrics, draw
