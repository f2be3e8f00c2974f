"""Table 4.5: count the distinct values in a sequence — reference LSTM, NAN gates, annealed NAN, hard gates.

Task (§4.3.6.6): sequences of ``length`` = 26 integers in [0, ``high`` = 10]; the target is the number of distinct
values, predicted as a class. Model: embedding → LSTM over the sequence → time-average pooling of the hidden
states → 1-hidden-layer ReLU MLP → softmax. Variants, each trained for the same number of updates on every seed:

- ``reference``: ``nn.LSTM`` (soft sigmoid / tanh gates);
- ``nan``: :class:`~surgeon.noise.NoisyLSTM`, every gate a NAN noisy hard activation at its default c;
- ``nan_annealed``: the same, with c annealed as the thesis does, c = max(c_min, c0/√(n + 1)) with c0 = 30,
  c_min = 0.5. The thesis counts n in units of 200 updates and reaches the floor after ~720,000 updates; here n runs
  on a continuous time scale fitted to the run (``floor_at``: the fraction of the run at which c reaches c_min), so
  the curve keeps its shape — fast fall at first, floor late in the run;
- ``hard``: hard-sigmoid / hard-tanh gates without noise, the control that tells what the noise adds.

Gate clipping (``clip_gates``, on for the noisy variants): the NAN output is not bounded (the linear leak (1 − α) u
and noise of std up to c/4 = 7.5 at c = 30); used as a forget gate over 26 steps it overflows the cell state. The
gates are clamped to the range of the function they replace (the authors' ``clip_output``), see
:class:`~surgeon.noise.NoisyLSTM`.

Budget: the same Adam updates for every variant, the learning rate constant until ``decay_from`` of the run and then
cosine-decayed to 0 (:func:`late_cosine`). A decay to 0 flattens any curve at the end, so whether a model had stopped
improving is measured, not assumed, over the last quarter of the run: ``test_error_fall_over_last_quarter`` (error at
3/4 of the run ÷ final error; 1.0 = flat) and, per seed, whether the absolute fall is within 2 binomial standard
errors of the final error on the test set (:func:`settled`; ``settled_seeds`` counts them).

Reported per variant, over the seeds: the final test error and the update at which the test error first falls
``plateau_margin`` below the majority-class error (leaving the plateau), each as mean ± spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgeon.noise import Annealer, NoisyLSTM
from surgeon.noise.annealer import inv_sqrt_every
from surgeon.recipes import data, plotting
from surgeon.recipes.engine import (
    RecipeContext,
    count_parameters,
    evaluate,
    fall_over_last_quarter,
    finite,
    run_jobs,
    spread,
    train,
    unwrap,
)


class UniqueCounter(nn.Module):
    """Embedding → (noisy) LSTM → mean over time → Linear → ReLU → Linear; ``forget_bias`` is added to the forget
    gate's input bias (torch's i, f, g, o layout) after the usual init."""

    def __init__(self, vocab: int, classes: int, embed: int, hidden: int, mlp: int, gates: str | None,
                 gate_kwargs: dict[str, Any] | None = None, clip_gates: bool = False,
                 forget_bias: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        if gates is None:
            self.rnn: nn.Module = nn.LSTM(embed, hidden, batch_first=True)
        else:
            self.rnn = NoisyLSTM(embed, hidden, batch_first=True, gates=gates, gate_kwargs=gate_kwargs,
                                 clip_gates=clip_gates)
        with torch.no_grad():
            self.rnn.bias_ih_l0[hidden:2 * hidden] += forget_bias
        self.head = nn.Sequential(nn.Linear(hidden, mlp), nn.ReLU(), nn.Linear(mlp, classes))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.embed(seq))
        return self.head(states.mean(dim=1))


VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"gates": None},
    "nan": {"gates": "noisy", "gate_kwargs": {"mode": "nan"}},
    "nan_annealed": {"gates": "noisy", "gate_kwargs": {"mode": "nan"}, "anneal": True},
    "hard": {"gates": "hard"},
}


def _train_one(ctx: RecipeContext, *, variant: str, seed: int, length: int, high: int, n_train: int, n_test: int,
               embed: int, hidden: int, mlp: int, steps: int, batch_size: int, lr: float, c0: float, c_min: float,
               every: float, clip_norm: float, clip_gates: bool, evals: int, decay_from: float,
               forget_bias: float = 0.0) -> dict[str, Any]:
    """One variant on one seed (data, init and noise all drawn from ``seed``)."""
    run_ctx = RecipeContext(name=ctx.name, out_dir=ctx.out_dir, seed=seed, device=ctx.device, quick=ctx.quick,
                            rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress)
    gen = run_ctx.generator(offset=4)
    x_tr, y_tr = data.unique_count(n_train, length, high, gen)
    x_te, y_te = data.unique_count(n_test, length, high, gen)
    classes = min(length, high + 1)
    spec = VARIANTS[variant]
    torch.manual_seed(seed)
    noisy = spec["gates"] == "noisy"
    net = UniqueCounter(high + 1, classes, embed, hidden, mlp, spec["gates"], spec.get("gate_kwargs"),
                        clip_gates=clip_gates and noisy, forget_bias=forget_bias)
    model = run_ctx.wrap(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, late_cosine(steps, decay_from))
    eval_every = max(1, steps // max(1, evals))
    c_trace: list[float] = []
    on_step = None
    if spec.get("anneal"):
        annealer = Annealer(unwrap(model), "inv-sqrt", c0=c0, c_min=c_min, every=every, continuous=True)

        def on_step(step: int, loss: float) -> None:
            values = annealer.step()
            if (step + 1) % eval_every == 0:
                c_trace.append(float(values[0]))

    ce = nn.functional.cross_entropy
    result = train(run_ctx, model, opt, run_ctx.loader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size), ce,
                   steps, description=f"{variant} seed {seed}", eval_every=eval_every, on_step=on_step,
                   clip_norm=clip_norm, scheduler=scheduler,
                   evaluate_fn=lambda: evaluate(model, x_te, y_te, ce, batch_size=len(x_te)))
    final = evaluate(model, x_te, y_te, ce, batch_size=len(x_te))
    majority = float((y_te != torch.mode(y_tr).values).float().mean())
    return {"variant": variant, "seed": seed, "test_error": finite(final["error"]), "majority": majority,
            "params": count_parameters(model), "skipped_updates": result.skipped,
            "curve": {"step": result.steps, "train_loss": result.curves["train_loss"],
                      "test_error": result.curves.get("test_error", [])},
            **({"c_schedule": c_trace} if c_trace else {})}


def late_cosine(steps: int, decay_from: float) -> Callable[[int], float]:
    """Learning-rate factor: 1 until update ``decay_from``·steps, then a cosine decay to 0 at ``steps`` (1.0: none).

    The plateau exit happens at the full rate; the decay lets every model settle by the end of the same budget.
    """
    start = decay_from * steps

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / max(1.0, steps - start))))

    return factor


def settled(errors: list[float | None], n_test: int, z: float = 2.0) -> dict[str, Any] | None:
    """Has the test error stopped falling, as far as the test set can tell? Over the last quarter of the run.

    The fall from the evaluation at 3/4 of the run to the final one, in absolute terms, against the binomial standard
    error of the final error on ``n_test`` examples, √(e (1 − e) / n_test): settled when the fall is at most ``z``
    standard errors (at 3 % error on 4,000 examples one standard error is 0.27 points, so the ratio criterion's
    10 % relative fall, 0.3 points, is below what the test set resolves; at 20 % error the bound is 1.3 points).
    None when the curve lacks either value.
    """
    if len(errors) < 4 or errors[-1] is None or errors[(3 * len(errors)) // 4 - 1] is None:
        return None
    final, at_three_quarters = float(errors[-1]), float(errors[(3 * len(errors)) // 4 - 1])
    standard_error = math.sqrt(final * (1.0 - final) / n_test)
    fall = at_three_quarters - final
    return {"fall": fall, "standard_error": standard_error, "settled": fall <= z * standard_error}


def plateau_exit(steps: list[int], errors: list[float], majority: float, margin: float) -> int | None:
    """The first recorded update whose test error is ``margin`` below the majority-class error (None: never)."""
    for step, error in zip(steps, errors, strict=True):
        if error is not None and error <= majority - margin:
            return int(step)
    return None


def run(ctx: RecipeContext, *, length: int = 26, high: int = 10, n_train: int = 20000, n_test: int = 4000,
        embed: int = 16, hidden: int = 64, mlp: int = 64, variants: tuple[str, ...] = tuple(VARIANTS),
        seeds: tuple[int, ...] = (0, 1, 2), steps: int = 5000, batch_size: int = 64, lr: float = 3e-3,
        c0: float = 30.0, c_min: float = 0.5, floor_at: float = 0.8, clip_norm: float = 5.0,
        clip_gates: bool = True, evals: int = 25, plateau_margin: float = 0.1, decay_from: float = 1.0,
        forget_bias: float = 0.0, workers: int = 2) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train every variant on every seed for ``steps`` Adam updates; report error and plateau exit, mean ± spread.

    ``floor_at`` fits the continuous annealing time scale (c reaches c_min at update floor_at·steps); ``workers``
    processes share the runs (results do not depend on it).
    """
    every = inv_sqrt_every(c0, c_min, floor_at * steps)
    common = {"length": length, "high": high, "n_train": n_train, "n_test": n_test, "embed": embed, "hidden": hidden,
              "mlp": mlp, "steps": steps, "batch_size": batch_size, "lr": lr, "c0": c0, "c_min": c_min,
              "every": every, "clip_norm": clip_norm, "clip_gates": clip_gates, "evals": evals,
              "decay_from": decay_from, "forget_bias": forget_bias}
    jobs = [{"variant": v, "seed": ctx.seed + int(s), **common} for v in variants for s in seeds]
    results = run_jobs(ctx, _train_one, jobs, workers=workers)
    runs: dict[str, list[dict[str, Any]]] = {v: [r for r in results if r["variant"] == v] for v in variants}
    for rs in runs.values():
        for r in rs:
            r["plateau_exit"] = plateau_exit(r["curve"]["step"], r["curve"]["test_error"], r["majority"],
                                             plateau_margin)
            r["last_quarter"] = settled(r["curve"]["test_error"], n_test)
    majority = spread([r["majority"] for r in results])
    summary: dict[str, Any] = {
        v: {"test_error": spread([r["test_error"] for r in rs]),
            "plateau_exit_update": spread([r["plateau_exit"] for r in rs]),
            "train_loss_fall_over_last_quarter": fall_over_last_quarter([r["curve"]["train_loss"] for r in rs]),
            "test_error_fall_over_last_quarter": fall_over_last_quarter([r["curve"]["test_error"] for r in rs]),
            "test_error_fall_points_over_last_quarter": spread([None if r["last_quarter"] is None
                                                                else r["last_quarter"]["fall"] for r in rs]),
            "settled_seeds": sum(bool(r["last_quarter"] and r["last_quarter"]["settled"]) for r in rs)}
        for v, rs in runs.items()}
    summary["majority_class_error"] = majority["mean"]
    metrics = {"summary": summary, "runs": runs, "seeds": list(seeds), "annealing_every": every,
               "classes": min(length, high + 1)}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        first = {v: rs[0]["curve"]["step"] for v, rs in runs.items() if rs}
        plotting.bands(axes[0], {v: (first[v], [r["curve"]["test_error"] for r in rs]) for v, rs in runs.items()
                                 if rs}, title="test error (mean, min-max over seeds)", ylabel="error")
        axes[0].axhline(majority["mean"], color="gray", ls=":", label="majority class")
        axes[0].legend(fontsize=8)
        plotting.bands(axes[1], {v: (first[v], [r["curve"]["train_loss"] for r in rs]) for v, rs in runs.items()
                                 if rs}, title="training loss", ylabel="cross-entropy", logy=True)
        plotting.save(fig, path, f"Unique-count task (length {length}, values 0-{high}; thesis Table 4.5), "
                                 f"{len(seeds)} seeds")

    return metrics, draw
