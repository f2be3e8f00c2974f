"""Annealing schedules (thesis eq. 4.31, §4.3.6.6, mollifying-networks slides) and exact resumption."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from surgeon.noise import (
    Annealer,
    MollifiedActivation,
    NoisyHardSigmoid,
    NoisyHardTanh,
    NoisyLSTM,
    StochasticSkip,
)


def mollified_mlp(widths=(4, 4, 4, 4)) -> nn.Sequential:
    layers = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        block = nn.Sequential(nn.Linear(w_in, w_out), MollifiedActivation(num_features=w_out))
        layers.append(StochasticSkip(block))
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def levels(model: nn.Module) -> dict[str, float]:
    return {
        n: float(m.p)
        for n, m in model.named_modules()
        if isinstance(m, (StochasticSkip, MollifiedActivation))
    }


def test_loss_exp_matches_eq_4_31_by_hand():
    model = mollified_mlp()
    ann = Annealer(model, "loss-exp", k=3.0, beta=0.8)
    assert ann.layer_ids == [1, 2, 3]
    assert ann.get_last() == [1.0, 1.0, 1.0] and set(levels(model).values()) == {1.0}  # all p = 1 at start
    losses = [2.0, 1.5, 1.2, 0.9, 0.7, 0.6]
    v = None
    for t, loss in enumerate(losses, start=1):
        v = loss if v is None else 0.8 * v + 0.2 * loss
        got = ann.step(torch.tensor(loss, dtype=torch.float64))  # a tensor loss is accepted
        expected = [1 - math.exp(-3.0 * v * layer / (t * 3)) for layer in (1, 2, 3)]
        assert got == pytest.approx(expected, rel=1e-12)
        assert got[0] < got[1] < got[2]  # lower layers anneal faster
        lv = levels(model)
        for i, layer in enumerate((1, 2, 3)):
            # the skip gate and the mollified activation inside its block share the layer's p
            assert lv[str(i)] == pytest.approx(expected[layer - 1], rel=1e-12)
            assert lv[f"{i}.block.1"] == pytest.approx(expected[layer - 1], rel=1e-12)
    assert ann.t == len(losses)


def test_loss_exp_stops_when_sum_of_p_reaches_delta():
    """The thesis' rule: freeze once Σ_l p_t^l ≤ δ. Hand values: p_l = 1 − exp(−30 l / (3 t)), loss 1."""
    def sum_p(t):
        return sum(1 - math.exp(-10 * layer / t) for layer in (1, 2, 3))

    # Σp starts near 3 and falls: 2.0249 at t = 16, 1.9651 at t = 17 — the first t with Σp ≤ 2
    assert sum_p(16) > 2.0 >= sum_p(17)
    ann = Annealer(mollified_mlp(), "loss-exp", k=30.0, beta=0.0, delta=2.0)
    steps = 0
    while not ann.stopped and steps < 100:
        ann.step(1.0)
        steps += 1
    assert steps == 17
    frozen = ann.get_last()
    assert frozen == pytest.approx([1 - math.exp(-10 * layer / 17) for layer in (1, 2, 3)], rel=1e-12)
    assert ann.step(0.01) == frozen
    with pytest.raises(ValueError, match="stop_on"):
        Annealer(mollified_mlp(), "loss-exp", stop_on="depth")


def test_loss_exp_stops_at_expected_depth():
    model = mollified_mlp()
    ann = Annealer(model, "loss-exp", k=30.0, beta=0.0, delta=1.5, stop_on="expected-depth")
    history = []
    for _ in range(50):
        history.append(ann.step(1.0))
        if ann.stopped:
            break
    assert ann.stopped
    frozen = history[-1]
    assert sum(1 - p for p in frozen) >= 1.5
    assert sum(1 - p for p in history[-2]) < 1.5
    # hand value of the stopping step t: p_l = 1 − exp(−30 l / (3 t))
    t = len(history)
    assert t > 3
    assert frozen == pytest.approx([1 - math.exp(-30 * layer / (3 * t)) for layer in (1, 2, 3)], rel=1e-12)
    for _ in range(5):
        assert ann.step(0.01) == frozen  # no further annealing
    assert ann.expected_depth == pytest.approx(sum(1 - p for p in frozen))


@pytest.mark.parametrize("schedule", ["linear", "sqrt"])
def test_linear_and_sqrt_decay_use_max(schedule):
    model = mollified_mlp()
    ann = Annealer(model, schedule, total_steps=20, p_min=0.1)
    assert ann.get_last() == [1.0] * 3
    for t in range(1, 30):
        got = ann.step()
        frac = t / 20 if schedule == "linear" else math.sqrt(t / 20)
        assert got == pytest.approx([max(0.1, 1 - frac)] * 3, rel=1e-12)
    assert set(levels(model).values()) == {0.1}


def test_inv_sqrt_anneals_noisy_c():
    model = nn.Sequential(nn.Linear(3, 3), NoisyHardTanh(), nn.Linear(3, 3), NoisyHardSigmoid())
    ann = Annealer(model, "inv-sqrt", c0=30.0, c_min=0.5, every=200)
    assert ann.get_last() == [30.0, 30.0]
    assert model[1].c.item() == 30.0 and model[3].c.item() == 30.0
    checkpoints = {
        199: 30.0,
        200: 30.0 / math.sqrt(2),
        399: 30.0 / math.sqrt(2),
        400: 30.0 / math.sqrt(3),
        2000: 30.0 / math.sqrt(11),
    }
    for t in range(1, 2001):
        got = ann.step()
        if t in checkpoints:
            assert got == pytest.approx([checkpoints[t]] * 2, rel=1e-12)
            assert model[1].c.item() == pytest.approx(checkpoints[t], rel=1e-12)
    # floor: 30/sqrt(n+1) < 0.5 once n + 1 > 3600
    ann.load_state_dict({**ann.state_dict(), "t": 3600 * 200})
    assert ann.step() == [0.5, 0.5]
    # the annealed c is part of the model checkpoint
    assert model.state_dict()["1.c"].item() == 0.5


def test_inv_sqrt_reaches_gate_activations_of_rnns():
    lstm = NoisyLSTM(3, 4, num_layers=2, gates="noisy")
    ann = Annealer(lstm, "inv-sqrt", c0=8.0, every=1)
    assert ann.layer_ids == [1, 2]  # one annealer layer per RNN layer
    ann.step()
    cs = {float(m.c) for m in lstm.modules() if isinstance(m, (NoisyHardSigmoid, NoisyHardTanh))}
    assert cs == {8.0 / math.sqrt(2)}


@pytest.mark.parametrize(
    "schedule,kw",
    [
        ("loss-exp", {"k": 2.0, "delta": 2.5}),
        ("linear", {"total_steps": 15}),
        ("sqrt", {"total_steps": 15}),
        ("inv-sqrt", {"every": 3}),
    ],
)
def test_resume_from_checkpoint_is_exact(schedule, kw):
    def losses(t):
        return 1.0 + 0.5 * math.sin(t)

    def build():
        torch.manual_seed(0)
        m = nn.Sequential(mollified_mlp(), NoisyHardSigmoid(num_features=1))
        return m, Annealer(m, schedule, **kw)

    model_a, ann_a = build()
    full = [ann_a.step(losses(t)) for t in range(20)]

    model_b, ann_b = build()
    first = [ann_b.step(losses(t)) for t in range(10)]
    buf = io.BytesIO()
    torch.save({"annealer": ann_b.state_dict(), "model": model_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    model_c, ann_c = build()
    model_c.load_state_dict(ckpt["model"])
    ann_c.load_state_dict(ckpt["annealer"])
    assert ann_c.get_last() == first[-1]
    second = [ann_c.step(losses(t)) for t in range(10, 20)]
    assert first + second == full
    assert all(
        torch.equal(a, b)
        for a, b in zip(model_a.state_dict().values(), model_c.state_dict().values(), strict=True)
    )
    # a fresh annealer without the model checkpoint still re-applies the loaded values
    model_d, ann_d = build()
    ann_d.load_state_dict(ann_c.state_dict())
    for (n1, m1), (n2, m2) in zip(model_a.named_buffers(), model_d.named_buffers(), strict=True):
        assert n1 == n2 and torch.equal(m1, m2)


def test_layers_explicit_indices_and_errors():
    model = nn.Sequential(MollifiedActivation(layer=2), MollifiedActivation(), MollifiedActivation(layer=5))
    ann = Annealer(model, "loss-exp", k=1.0, num_layers=6)
    assert [layer for _, _, layer in ann.targets] == [2, 1, 5]
    got = ann.step(0.5)
    assert got == pytest.approx([1 - math.exp(-0.5 * layer / 6) for layer in (1, 2, 5)], rel=1e-12)
    with pytest.raises(ValueError, match="loss"):
        Annealer(model, "loss-exp").step()
    with pytest.raises(ValueError):
        Annealer(nn.Linear(2, 2), "linear", total_steps=5)
    with pytest.raises(ValueError):
        Annealer(model, "linear")  # total_steps missing
    with pytest.raises(TypeError):
        Annealer(model, "sqrt", total_steps=5, c0=3.0)
    with pytest.raises(ValueError):
        Annealer(model, "cosine")
    # a noisy activation (no p) is not driven by a p schedule and takes no layer number
    mixed = nn.Sequential(NoisyHardSigmoid(), MollifiedActivation())
    assert [(n, layer) for n, _, layer in Annealer(mixed, "sqrt", total_steps=4).targets] == [("1", 1)]


def test_inv_sqrt_on_a_continuous_time_scale_reaches_its_floor_when_fitted():
    from surgeon.noise.annealer import inv_sqrt_every

    every = inv_sqrt_every(30.0, 0.5, 800)
    assert every == pytest.approx(800 / 3599)  # (30 / 0.5)² − 1 = 3599
    lstm = NoisyLSTM(3, 4, gates="noisy")
    ann = Annealer(lstm, "inv-sqrt", c0=30.0, c_min=0.5, every=every, continuous=True)
    values = [ann.step()[0] for _ in range(1000)]
    # by hand: c_t = max(0.5, 30 / sqrt(t · 3599 / 800 + 1)), t = 1, 2, ...
    assert values[0] == pytest.approx(30 / math.sqrt(3599 / 800 + 1), rel=1e-12)
    assert values[399] == pytest.approx(30 / math.sqrt(400 * 3599 / 800 + 1), rel=1e-12)
    assert values[798] > 0.5 and values[799] == pytest.approx(0.5) and values[-1] == 0.5
    with pytest.raises(ValueError):
        Annealer(lstm, "inv-sqrt", every=0.5)  # a fractional every needs continuous=True
