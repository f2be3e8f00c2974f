"""Fig. 4.16: n-bit parity with a deep sigmoid MLP — plain vs mollified (annealed) vs residual + batch norm.

The thesis trains a 6-layer sigmoid MLP on 40-bit parity (Glorot init, SGD momentum 0.92, lr 0.001, a_i of the
mollified activation ~ U[−2, 2]) and shows that the plain MLP does not learn while the mollified MLP converges
faster than a residual MLP with batch normalisation. Laptop scale uses fewer bits (``bits``) and a few thousand
updates; the three models:

- ``plain``: ``layers`` × (Linear → sigmoid), then a linear 2-way classifier;
- ``mollified``: each hidden layer is ``StochasticSkip(Linear → MollifiedActivation("sigmoid"))`` (eqs. 4.24–4.30),
  with p^l = 1 at the start (the net is linear) annealed by ``Annealer(model, "loss-exp")`` (eq. 4.31) from the
  rank-averaged training loss;
- ``residual_bn``: h ← h + sigmoid(BN(Linear(h))) per hidden layer (the first layer maps the input to the width).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgeon.noise import Annealer, MollifiedActivation, StochasticSkip
from surgeon.recipes import data, plotting
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, finite, train, unwrap


def _glorot(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every Linear (the thesis' init)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


class ResidualBlock(nn.Module):
    """``h + sigmoid(BN(W h + b))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear, self.norm = nn.Linear(width, width), nn.BatchNorm1d(width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.sigmoid(self.norm(self.linear(h)))


def build(kind: str, bits: int, width: int, layers: int, c: float = 100.0) -> nn.Module:
    """One of the three parity MLPs (see module docstring); ``layers`` hidden layers of ``width`` units."""
    if kind == "plain":
        body: list[nn.Module] = []
        for i in range(layers):
            body += [nn.Linear(bits if i == 0 else width, width), nn.Sigmoid()]
        return _glorot(nn.Sequential(*body, nn.Linear(width, 2)))
    if kind == "mollified":
        # input (bits) → width: the skipped input is zero-padded to the width, as eq. 4.27 allows
        blocks = [StochasticSkip(nn.Sequential(nn.Linear(bits if i == 0 else width, width),
                                               MollifiedActivation("sigmoid", c=c, num_features=width)),
                                 p=1.0, layer=i + 1) for i in range(layers)]
        return _glorot(nn.Sequential(*blocks, nn.Linear(width, 2)))
    if kind == "residual_bn":
        first = nn.Sequential(nn.Linear(bits, width), nn.BatchNorm1d(width), nn.Sigmoid())
        return _glorot(nn.Sequential(first, *[ResidualBlock(width) for _ in range(layers - 1)],
                                     nn.Linear(width, 2)))
    raise ValueError(f"unknown parity model {kind!r}")


def run(ctx: RecipeContext, *, bits: int = 16, n_train: int = 20000, n_test: int = 4000, width: int = 64,
        layers: int = 6, kinds: tuple[str, ...] = ("plain", "mollified", "residual_bn"), steps: int = 4000,
        batch_size: int = 100, optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.92, c: float = 100.0,
        anneal: dict[str, Any] | None = None) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train the three MLPs (SGD or Adam, momentum 0.92) on the same data; record loss / accuracy curves."""
    anneal = dict(anneal or {"k": 100.0, "beta": 0.9})
    gen = ctx.generator(offset=3)
    x_tr, y_tr = data.parity(n_train, bits, gen)
    x_te, y_te = data.parity(n_test, bits, gen)
    dataset = torch.utils.data.TensorDataset(x_tr, y_tr)
    ce = nn.functional.cross_entropy
    runs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        torch.manual_seed(ctx.seed)
        net = build(kind, bits, width, layers, c)
        model = ctx.wrap(net)
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        else:   # laptop-scale budgets: Adam (beta1 = momentum) reaches the regime SGD needs far longer for
            opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999))
        levels: list[float] = []
        on_step = None
        if kind == "mollified":
            annealer = Annealer(unwrap(model), "loss-exp", **anneal)

            def on_step(step: int, loss: float, annealer: Annealer = annealer, levels: list[float] = levels) -> None:
                values = annealer.step(loss)   # the all-reduced loss: every rank anneals identically
                if step % 20 == 0:
                    levels.append(float(sum(values) / len(values)))

        result = train(ctx, model, opt, ctx.loader(dataset, batch_size), ce, steps, description=kind,
                       eval_every=max(1, steps // 40), on_step=on_step,
                       evaluate_fn=lambda m=model: evaluate(m, x_te, y_te, ce))
        train_eval = evaluate(model, x_tr, y_tr, ce)
        test_eval = evaluate(model, x_te, y_te, ce)
        runs[kind] = {"train_loss": finite(train_eval["loss"]), "train_accuracy": 1 - train_eval["error"],
                      "test_accuracy": 1 - test_eval["error"], "params": count_parameters(model),
                      "curve": {"step": result.steps, "train_loss": result.curves["train_loss"],
                                "test_accuracy": [1 - e for e in result.curves.get("test_error", [])]},
                      **({"mean_noise_level": levels} if levels else {})}
    summary = {k: {"train_loss": r["train_loss"], "test_accuracy": r["test_accuracy"]} for k, r in runs.items()}
    metrics = {"summary": summary, "runs": runs, "bits": bits}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        plotting.curves(axes[0], {k: (r["curve"]["step"], r["curve"]["train_loss"]) for k, r in runs.items()},
                        title="training loss (running mean)", ylabel="cross-entropy")
        plotting.curves(axes[1], {k: (r["curve"]["step"], r["curve"]["test_accuracy"]) for k, r in runs.items()},
                        title="held-out accuracy", ylabel="accuracy")
        plotting.save(fig, path, f"{bits}-bit parity, {layers}-layer sigmoid MLP (thesis Fig. 4.16: 40 bits)")

    return metrics, draw
