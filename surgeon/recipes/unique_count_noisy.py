"""Table 4.5: count the distinct values in a sequence — reference LSTM vs noisy (NAN) gates vs NAN with annealed c.

Task (§4.3.6.6): sequences of ``length`` = 26 integers in [0, ``high`` = 10]; the target is the number of distinct
values, predicted as a class. Model: embedding → LSTM over the sequence → time-average pooling of the hidden
states → 1-hidden-layer ReLU MLP → softmax. Variants:

- ``reference``: ``nn.LSTM`` (soft sigmoid / tanh gates);
- ``nan``: :class:`~surgeon.noise.NoisyLSTM` with every gate a NAN noisy hard activation (default c);
- ``nan_annealed``: the same, c annealed from 30 towards 0.5 as c/√(t+1), t += 1 every ``every`` updates
  (``Annealer(model, "inv-sqrt", c0=30, c_min=0.5, every=every)``). The thesis uses every = 200 over far more
  updates than this recipe can afford; the YAML compresses the schedule in time (see there).

Gate clipping (``clip_gates``, on by default for both noisy variants). The NAN output
φ = α h + (1 − α) u + d σ ε is not bounded: the linear leak (1 − α) u grows with |x| and the noise std σ reaches
c/4 in saturation, i.e. 7.5 at c = 30. Used as LSTM gates, a forget gate of magnitude ~7 multiplies the cell
state at each of the 26 steps and the cell nonlinearity passes it on linearly, so the state overflows to
inf/NaN within a few updates. The thesis' gates are meant to behave as (noisy) switches in [0, 1] and the
authors' code offers ``clip_output`` (a hard-tanh on the noisy output) for this purpose; the recipe therefore
clamps each gate's output to its base range ([0, 1] for the sigmoid gates, [−1, 1] for the tanh ones). The
NAN module itself is unchanged: inside the base range (every |x| the noiseless output can reach in practice)
φ is untouched; only the excursions that noise or the leak push outside it are cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgeon.noise import Annealer, NoisyHardSigmoid, NoisyLSTM
from surgeon.recipes import data, plotting
from surgeon.recipes.engine import RecipeContext, count_parameters, evaluate, finite, train, unwrap


class ClippedGate(nn.Module):
    """``clamp(act(x), lo, hi)``: bounds a noisy gate to the range of the function it replaces."""

    def __init__(self, act: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        self.act = act
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x).clamp(self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"lo={self.lo:g}, hi={self.hi:g}"


def clip_gate_outputs(rnn: nn.Module) -> int:
    """Wrap every gate activation of a :class:`NoisyLSTM` in :class:`ClippedGate`; returns how many."""
    wrapped = 0
    for group in getattr(rnn, "gate_activations", None) or []:
        for name, act in list(group.acts.items()):
            lo = 0.0 if isinstance(act, NoisyHardSigmoid) else -1.0
            group.acts[name] = ClippedGate(act, lo, 1.0)
            wrapped += 1
    return wrapped


class UniqueCounter(nn.Module):
    """Embedding → (noisy) LSTM → mean over time → Linear → ReLU → Linear."""

    def __init__(self, vocab: int, classes: int, embed: int, hidden: int, mlp: int, gates: str | None,
                 gate_kwargs: dict[str, Any] | None = None, clip_gates: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        if gates is None:
            self.rnn: nn.Module = nn.LSTM(embed, hidden, batch_first=True)
        else:
            self.rnn = NoisyLSTM(embed, hidden, batch_first=True, gates=gates, gate_kwargs=gate_kwargs)
            if clip_gates:
                clip_gate_outputs(self.rnn)
        self.head = nn.Sequential(nn.Linear(hidden, mlp), nn.ReLU(), nn.Linear(mlp, classes))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.embed(seq))
        return self.head(states.mean(dim=1))


VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"gates": None},
    "nan": {"gates": "noisy", "gate_kwargs": {"mode": "nan"}},
    "nan_annealed": {"gates": "noisy", "gate_kwargs": {"mode": "nan"}, "anneal": True},
}


def run(ctx: RecipeContext, *, length: int = 26, high: int = 10, n_train: int = 20000, n_test: int = 4000,
        embed: int = 16, hidden: int = 64, mlp: int = 64, variants: tuple[str, ...] = tuple(VARIANTS),
        steps: int = 3000, batch_size: int = 64, lr: float = 3e-3, c0: float = 30.0, c_min: float = 0.5,
        every: int = 200, clip_norm: float = 5.0, clip_gates: bool = True,
        evals: int = 15) -> tuple[dict[str, Any], Callable[[str], None]]:
    """Train every variant on the same generated data (Adam); report test error and the c schedule used.

    ``clip_gates`` clamps the noisy gates to their base range (module docstring); ``evals`` is how many times the
    test set is evaluated during training (one batch each: the Python time loop dominates, not the batch size).
    """
    gen = ctx.generator(offset=4)
    x_tr, y_tr = data.unique_count(n_train, length, high, gen)
    x_te, y_te = data.unique_count(n_test, length, high, gen)
    classes = min(length, high + 1)
    dataset = torch.utils.data.TensorDataset(x_tr, y_tr)
    ce = nn.functional.cross_entropy
    runs: dict[str, dict[str, Any]] = {}
    for name in variants:
        spec = VARIANTS[name]
        torch.manual_seed(ctx.seed)
        net = UniqueCounter(high + 1, classes, embed, hidden, mlp, spec["gates"], spec.get("gate_kwargs"),
                            clip_gates=clip_gates)
        model = ctx.wrap(net)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        c_trace: list[float] = []
        on_step = None
        if spec.get("anneal"):
            annealer = Annealer(unwrap(model), "inv-sqrt", c0=c0, c_min=c_min, every=every)

            def on_step(step: int, loss: float, annealer: Annealer = annealer, trace: list[float] = c_trace) -> None:
                values = annealer.step()
                if step % every == 0:
                    trace.append(float(values[0]))

        result = train(ctx, model, opt, ctx.loader(dataset, batch_size), ce, steps, description=name,
                       eval_every=max(1, steps // max(1, evals)), on_step=on_step, clip_norm=clip_norm,
                       evaluate_fn=lambda m=model: evaluate(m, x_te, y_te, ce, batch_size=len(x_te)))
        final = evaluate(model, x_te, y_te, ce, batch_size=len(x_te))
        runs[name] = {"test_error": finite(final["error"]), "test_loss": finite(final["loss"]),
                      "params": count_parameters(model), "skipped_updates": result.skipped,
                      "clipped_gates": bool(clip_gates and spec["gates"] is not None),
                      "curve": {"step": result.steps, "train_loss": result.curves["train_loss"],
                                "test_error": result.curves.get("test_error", [])},
                      **({"c_schedule": c_trace} if c_trace else {})}
    # the constant predictor's error, a floor for "did it learn anything"
    majority = float((y_te != torch.mode(y_tr).values).float().mean())
    summary = {k: {"test_error": r["test_error"]} for k, r in runs.items()}
    summary["majority_class_error"] = majority
    metrics = {"summary": summary, "runs": runs, "classes": classes}

    def draw(path: str) -> None:
        fig, axes = plotting.figure(2, width=5.0)
        plotting.curves(axes[0], {k: (r["curve"]["step"], r["curve"]["test_error"]) for k, r in runs.items()},
                        title="test error", ylabel="error")
        axes[0].axhline(majority, color="gray", ls=":", label="majority class")
        axes[0].legend(fontsize=8)
        plotting.curves(axes[1], {k: (r["curve"]["step"], r["curve"]["train_loss"]) for k, r in runs.items()},
                        title="training loss", ylabel="cross-entropy", logy=True)
        plotting.save(fig, path, f"Unique-count task (length {length}, values 0-{high}; thesis Table 4.5)")

    return metrics, draw
