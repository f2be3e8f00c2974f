"""Fig. 4.16: 40-bit parity with a deep sigmoid MLP — plain vs residual + batch norm vs mollified (annealed).

The thesis trains 6-layer sigmoid MLPs on 40-bit parity (Glorot init, SGD lr 0.001 with momentum 0.92, a_i of the
mollified activation ~ U[−2, 2]) and plots the *training* loss: the plain MLP stays at log 2 while the mollified MLP
and a residual MLP with batch normalisation bring it down. 40-bit parity cannot be learnt from samples by gradient
descent — 2^40 patterns, and every proper subset of the bits is independent of the label — so the figure shows
memorisation of a fixed training set (``n_train`` samples), and the held-out accuracy of every model is chance
(recorded to say so). The models, ``layers`` hidden layers of ``width`` units each:

- ``plain``: ``layers`` × (Linear → sigmoid), then a linear 2-way classifier;
- ``residual_bn``: h ← h + sigmoid(BN(Linear(h))) per hidden layer (the first layer maps the input to the width);
- ``mollified``: each hidden layer is ``StochasticSkip(Linear → MollifiedActivation("sigmoid"))`` (eqs. 4.24–4.30),
  p^l = 1 at the start (every layer the identity: the net is its output layer on the zero-padded bits, a linear
  classifier), annealed by the ``anneal`` schedule: ``loss-exp`` (eq. 4.31, from the
  rank-averaged training loss; its pace is set by k — larger k keeps p near 1 longer) or ``linear`` over
  ``total_steps``;
- ``mollified_residual`` (optional, Fig. 4.15): the residual connection on the block's path, inside the skip,
  h ← StochasticSkip(h + ψ(Linear(h))): the identity at p = 1 as eq. 4.28 requires, a residual sigmoid MLP (no
  batch norm) at p = 0;
- ``mollified_residual_bn``: the same with batch norm before ψ, h ← StochasticSkip(h + ψ(BN(Linear(h)))): at p = 0
  exactly the ``residual_bn`` model, so it isolates what the annealed phase adds to that baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgeon.noise import Annealer, MollifiedActivation, StochasticSkip
from surgeon.recipes import data, plotting
from surgeon.recipes.engine import (
    RecipeContext,
    count_parameters,
    evaluate,
    finite,
    run_jobs,
    spread,
    train,
    unwrap,
)

#: The mollified models: every hidden layer a StochasticSkip over a mollified block (see the module docstring).
MOLLIFIED_MODELS = ("mollified", "mollified_residual", "mollified_residual_bn")


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


class ResidualPath(nn.Module):
    """``h + block(h)``: the identity path of Fig. 4.15 around a mollified block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.block(h)


def _mollified(n_in: int, width: int, c: float, norm: bool, residual: bool, layer: int) -> StochasticSkip:
    """One mollified layer l: StochasticSkip over Linear (→ BN) → ψ, the residual connection (if any) on the
    block's path (the dashed line of Fig. 4.15), so the layer is the identity at p = 1 (eq. 4.28) either way:
    h ← π ⊙ h + (1 − π) ⊙ ([h +] ψ(BN(W h + b)))."""
    body: list[nn.Module] = [nn.Linear(n_in, width), *([nn.BatchNorm1d(width)] if norm else []),
                             MollifiedActivation("sigmoid", c=c, num_features=width)]
    block: nn.Module = nn.Sequential(*body)
    return StochasticSkip(ResidualPath(block) if residual else block, p=1.0, layer=layer)


def build(kind: str, bits: int, width: int, layers: int, c: float = 100.0) -> nn.Module:
    """One of the parity MLPs (see module docstring); ``layers`` hidden layers of ``width`` units."""
    if kind == "plain":
        body: list[nn.Module] = []
        for i in range(layers):
            body += [nn.Linear(bits if i == 0 else width, width), nn.Sigmoid()]
        return _glorot(nn.Sequential(*body, nn.Linear(width, 2)))
    if kind in MOLLIFIED_MODELS:
        residual, norm = "residual" in kind, kind.endswith("_bn")
        # input (bits) → width: the skipped input is zero-padded to the width, as eq. 4.27 allows; the first layer
        # changes the width, so it has no residual connection (as in residual_bn)
        blocks = [_mollified(bits if i == 0 else width, width, c, norm, residual and i > 0, i + 1)
                  for i in range(layers)]
        return _glorot(nn.Sequential(*blocks, nn.Linear(width, 2)))
    if kind == "residual_bn":
        first = nn.Sequential(nn.Linear(bits, width), nn.BatchNorm1d(width), nn.Sigmoid())
        return _glorot(nn.Sequential(first, *[ResidualBlock(width) for _ in range(layers - 1)],
                                     nn.Linear(width, 2)))
    raise ValueError(f"unknown parity model {kind!r}")


def _train_one(ctx: RecipeContext, *, kind: str, seed: int, bits: int, n_train: int, n_test: int, width: int,
               layers: int, steps: int, batch_size: int, lr: float, momentum: float, c: float,
               anneal: dict[str, Any], evals: int) -> dict[str, Any]:
    """One model on one seed: the fixed training set, init and noise all drawn from ``seed``."""
    run_ctx = RecipeContext(name=ctx.name, out_dir=ctx.out_dir, seed=seed, device=ctx.device, quick=ctx.quick,
                            rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress)
    gen = run_ctx.generator(offset=3)
    x_tr, y_tr = data.parity(n_train, bits, gen)
    x_te, y_te = data.parity(n_test, bits, gen)
    ce = nn.functional.cross_entropy
    torch.manual_seed(seed)
    model = run_ctx.wrap(build(kind, bits, width, layers, c))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    eval_every = max(1, steps // max(1, evals))
    levels: list[float] = []
    on_step = None
    if kind.startswith("mollified"):
        schedule = dict(anneal)
        name = schedule.pop("schedule", "loss-exp")
        annealer = Annealer(unwrap(model), name, **schedule)

        def on_step(step: int, loss: float) -> None:
            values = annealer.step(loss)   # the all-reduced loss: every rank anneals identically
            if (step + 1) % eval_every == 0:
                levels.append(float(sum(values) / len(values)))

    result = train(run_ctx, model, opt, run_ctx.loader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size), ce,
                   steps, description=f"{kind} seed {seed}", eval_every=eval_every, on_step=on_step,
                   evaluate_fn=lambda: {f"train_{k}": v for k, v in evaluate(model, x_tr, y_tr, ce).items()})
    train_eval, test_eval = evaluate(model, x_tr, y_tr, ce), evaluate(model, x_te, y_te, ce)
    curve_loss = result.curves.get("test_train_loss", [])
    return {"kind": kind, "seed": seed, "train_loss": finite(train_eval["loss"]),
            "train_accuracy": 1 - train_eval["error"], "held_out_accuracy": 1 - test_eval["error"],
            "params": count_parameters(model),
            "memorised_at": next((s for s, v in zip(result.steps, curve_loss, strict=True) if v < 0.1), None),
            "curve": {"step": result.steps, "train_loss": curve_loss},
            **({"mean_noise_level": levels} if levels else {})}


def run(ctx: RecipeContext, *, bits: int = 40, n_train: int = 1000, n_test: int = 1000, width: int = 128,
        layers: int = 6, kinds: tuple[str, ...] = ("plain", "residual_bn", "mollified"),
        seeds: tuple[int, ...] = (0, 1, 2), steps: int = 6000, batch_size: int = 100, lr: float = 0.001,
        momentum: float = 0.92, c: float = 100.0, anneal: dict[str, Any] | None = None, evals: int = 40,
        workers: int = 2) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train each model on each seed with the thesis' SGD; training loss on the fixed set, mean ± spread.

    ``anneal``: the mollified nets' schedule, ``{"schedule": "loss-exp", "k": ..., "beta": ...}`` or
    ``{"schedule": "linear", "total_steps": ...}``. "Memorised at": the first evaluation with training loss < 0.1.
    """
    anneal = dict(anneal or {"schedule": "loss-exp", "k": 100.0, "beta": 0.9})
    common = {"bits": bits, "n_train": n_train, "n_test": n_test, "width": width, "layers": layers, "steps": steps,
              "batch_size": batch_size, "lr": lr, "momentum": momentum, "c": c, "anneal": anneal, "evals": evals}
    jobs = [{"kind": k, "seed": ctx.seed + int(s), **common} for k in kinds for s in seeds]
    results = run_jobs(ctx, _train_one, jobs, workers=workers)
    runs = {k: [r for r in results if r["kind"] == k] for k in kinds}
    summary = {k: {"train_loss": spread([r["train_loss"] for r in rs]),
                   "memorised_at": spread([r["memorised_at"] for r in rs]),
                   "held_out_accuracy": spread([r["held_out_accuracy"] for r in rs])} for k, rs in runs.items()}
    metrics = {"summary": summary, "runs": runs, "bits": bits, "seeds": list(seeds),
               "note": f"held-out accuracy of {bits}-bit parity is chance for every model; the figure is memorisation"}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        plotting.bands(axes[0], {k: (rs[0]["curve"]["step"], [r["curve"]["train_loss"] for r in rs])
                                 for k, rs in runs.items() if rs},
                       title="training loss on the fixed set (mean, min-max)", ylabel="cross-entropy")
        levels = {k: rs for k, rs in runs.items() if rs and "mean_noise_level" in rs[0]}
        plotting.bands(axes[1], {k: (rs[0]["curve"]["step"], [r["mean_noise_level"] for r in rs])
                                 for k, rs in levels.items()}, title="mean noise level p of the mollified nets",
                       ylabel="p")
        plotting.save(fig, path, f"{bits}-bit parity, {n_train} fixed samples, {layers}-layer sigmoid MLP, SGD "
                                 f"(thesis Fig. 4.16), {len(seeds)} seeds")

    return metrics, draw
