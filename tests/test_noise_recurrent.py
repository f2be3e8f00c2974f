"""Noisy / mollified LSTM and GRU: weight transfer from torch and gate wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from surgeon.noise import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell

CONFIGS = [
    {},
    {"num_layers": 2, "bidirectional": True, "batch_first": True},
    {"num_layers": 2, "bias": False},
    {"num_layers": 3, "dropout": 0.3, "bidirectional": True},
]


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_soft_gates_reproduce_torch(kind, cfg):
    torch.manual_seed(0)
    ref = (nn.LSTM if kind == "lstm" else nn.GRU)(5, 7, **cfg).eval()
    ours = (NoisyLSTM if kind == "lstm" else NoisyGRU).from_torch(ref, gates="soft")
    assert not ours.training
    n_states = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    x = torch.randn(4, 9, 5) if cfg.get("batch_first") else torch.randn(9, 4, 5)
    h0 = torch.randn(n_states, 4, 7)
    hx = (h0, torch.randn(n_states, 4, 7)) if kind == "lstm" else h0
    for args in ((x,), (x, hx)):
        out_ref, st_ref = ref(*args)
        out, st = ours(*args)
        _close(out, out_ref)
        if kind == "lstm":
            _close(st[0], st_ref[0])
            _close(st[1], st_ref[1])
        else:
            _close(st, st_ref)
    # unbatched input
    xu = torch.randn(6, 5)
    _close(ours(xu)[0], ref(xu)[0])


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_sequences(kind, enforce_sorted):
    torch.manual_seed(1)
    ref = (nn.LSTM if kind == "lstm" else nn.GRU)(3, 4, num_layers=2, bidirectional=True)
    ours = (NoisyLSTM if kind == "lstm" else NoisyGRU).from_torch(ref, gates="soft")
    lengths = torch.tensor([7, 5, 5, 2]) if enforce_sorted else torch.tensor([3, 7, 1, 5])
    x = torch.randn(7, 4, 3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    h0 = torch.randn(4, 4, 4)
    hx = (h0, torch.randn(4, 4, 4)) if kind == "lstm" else h0  # given in the original batch order
    for args in ((packed,), (packed, hx)):
        out_ref, st_ref = ref(*args)
        out, st = ours(*args)
        assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
        _close(out.data, out_ref.data)
        pad, _ = pad_packed_sequence(out)
        pad_ref, _ = pad_packed_sequence(out_ref)
        _close(pad, pad_ref)
        states = zip(st if kind == "lstm" else (st,), st_ref if kind == "lstm" else (st_ref,), strict=True)
        for a, b in states:
            _close(a, b)


@pytest.mark.parametrize("bias", [True, False])
def test_cells_reproduce_torch(bias):
    torch.manual_seed(2)
    lref, gref = nn.LSTMCell(5, 6, bias=bias), nn.GRUCell(5, 6, bias=bias)
    lcell, gcell = NoisyLSTMCell.from_torch(lref, gates="soft"), NoisyGRUCell.from_torch(gref, gates="soft")
    x, h, c = torch.randn(3, 5), torch.randn(3, 6), torch.randn(3, 6)
    for a, b in zip(lcell(x, (h, c)), lref(x, (h, c)), strict=True):
        _close(a, b)
    for a, b in zip(lcell(x), lref(x), strict=True):
        _close(a, b)
    _close(gcell(x, h), gref(x, h))
    _close(gcell(x[0]), gref(x[0]))


def test_state_dict_names_match_torch_both_ways():
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ours = NoisyLSTM(3, 4, num_layers=2, bidirectional=True, gates="noisy")
    ref_keys = set(ref.state_dict())
    our_keys = set(ours.state_dict())
    assert ref_keys <= our_keys
    assert all(k.startswith("gate_activations.") for k in our_keys - ref_keys)
    res = ref.load_state_dict(ours.state_dict(), strict=False)  # back to torch
    assert not res.missing_keys
    assert torch.equal(ref.weight_hh_l1_reverse, ours.weight_hh_l1_reverse)
    with pytest.raises(NotImplementedError):
        NoisyLSTM.from_torch(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError):
        NoisyGRU.from_torch(ref)


def np_sig(z):
    return 1 / (1 + np.exp(-z))


def np_noisy_eval(x, p, kind, c, alpha, mode):
    """Expectation form (eq. 4.17) of the noisy hard sigmoid / tanh."""
    h = np.clip(0.25 * x + 0.5, 0, 1) if kind == "sigmoid" else np.clip(x, -1, 1)
    u = 0.25 * x + 0.5 if kind == "sigmoid" else x
    sigma = c * (np_sig(p * (h - u)) - 0.5) ** 2
    d = -np.where(x >= 0, 1.0, -1.0) * (1.0 if 1 - alpha >= 0 else -1.0)
    eps = 0.0 if mode == "nan" else math.sqrt(2 / math.pi)
    return alpha * h + (1 - alpha) * u + d * sigma * eps


def test_noisy_lstm_cell_gate_wiring_in_eval():
    torch.manual_seed(3)
    cell = NoisyLSTMCell(4, 3, gates="noisy").double().eval()
    with torch.no_grad():
        for w in (cell.weight_ih, cell.weight_hh):
            w.mul_(6.0)  # push the gates into saturation so the noisy terms matter
    x, h, c = (
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
    )
    h1, c1 = cell(x, (h, c))
    acts = cell.gate_activations.acts
    g = (x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh).detach().numpy()
    gi, gf, gg, go = np.split(g, 4, axis=1)

    def act(name, z):
        m = acts[name]
        kind = "sigmoid" if name in "ifo" else "tanh"
        return np_noisy_eval(z, m.p.detach().numpy(), kind, m.c.item(), m.alpha, m.mode)

    c_exp = act("f", gf) * c.numpy() + act("i", gi) * act("g", gg)
    h_exp = act("o", go) * act("c", c_exp)
    np.testing.assert_allclose(c1.detach().numpy(), c_exp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h1.detach().numpy(), h_exp, rtol=1e-12, atol=1e-12)
    # 5 distinct activation modules, each with its own per-unit p
    assert sorted(acts.keys()) == ["c", "f", "g", "i", "o"] and acts["i"].p.shape == (3,)


def test_hard_gru_cell_wiring():
    torch.manual_seed(4)
    cell = NoisyGRUCell(4, 3, gates="hard").double()
    x, h = torch.randn(5, 4, dtype=torch.float64) * 3, torch.randn(5, 3, dtype=torch.float64)
    gi = (x @ cell.weight_ih.T + cell.bias_ih).detach().numpy()
    gh = (h @ cell.weight_hh.T + cell.bias_hh).detach().numpy()
    hs = lambda z: np.clip(0.25 * z + 0.5, 0, 1)  # noqa: E731
    r = hs(gi[:, :3] + gh[:, :3])
    z = hs(gi[:, 3:6] + gh[:, 3:6])
    n = np.clip(gi[:, 6:] + r * gh[:, 6:], -1, 1)
    np.testing.assert_allclose(
        cell(x, h).detach().numpy(), (1 - z) * n + z * h.numpy(), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_mollified_gates_at_p_zero_are_the_soft_network(kind):
    torch.manual_seed(5)
    ref = (nn.LSTM if kind == "lstm" else nn.GRU)(3, 5, num_layers=2, batch_first=True)
    ours = (NoisyLSTM if kind == "lstm" else NoisyGRU).from_torch(
        ref, gates="mollified", gate_kwargs={"p": 0.0, "c": 50.0}
    )
    ours.train()  # noise is drawn, but p = 0 switches it off exactly
    x = torch.randn(2, 6, 3)
    _close(ours(x)[0], ref(x)[0], tol=1e-6)
    for m in ours.modules():
        if hasattr(m, "set_noise_level") and m.anneals_level:
            m.set_noise_level(1.0)
    assert (ours(x)[0] - ref(x)[0]).abs().max() > 1e-3  # p = 1 changes the network


def test_noisy_training_is_seeded_and_differentiable():
    torch.manual_seed(6)
    lstm = NoisyLSTM(
        3, 4, num_layers=2, bidirectional=True, gates="noisy", gate_kwargs={"mode": "nan", "c": 5.0}
    ).train()
    x = torch.randn(8, 2, 3) * 4
    torch.manual_seed(7)
    out1, _ = lstm(x)
    torch.manual_seed(7)
    out2, _ = lstm(x)
    assert torch.equal(out1, out2)
    out3, _ = lstm(x)
    assert not torch.equal(out1, out3)
    out1.square().sum().backward()
    assert lstm.weight_ih_l0.grad.abs().sum() > 0
    assert lstm.gate_activations[1].acts["f_reverse"].p.grad is not None
    assert torch.equal(lstm.eval()(x)[0], lstm(x)[0])  # eval is deterministic
    cfg = lstm.config()
    assert cfg["gates"] == "noisy" and cfg["gate_kwargs"] == {"mode": "nan", "c": 5.0}


def np_noisy_train(x, p, kind, c, alpha, mode, xi):
    """Eq. 4.15 with the noise sample given: α h + (1 − α) u + d σ ε, ε = ξ (nan) or |ξ| (nah)."""
    h = np.clip(0.25 * x + 0.5, 0, 1) if kind == "sigmoid" else np.clip(x, -1, 1)
    u = 0.25 * x + 0.5 if kind == "sigmoid" else x
    sigma = c * (np_sig(p * (h - u)) - 0.5) ** 2
    d = -np.where(x >= 0, 1.0, -1.0) * (1.0 if 1 - alpha >= 0 else -1.0)
    return alpha * h + (1 - alpha) * u + d * sigma * (xi if mode == "nan" else np.abs(xi))


@pytest.mark.parametrize("mode", ["nan", "nah"])
def test_fused_noisy_lstm_cell_in_training_matches_eq_4_15(mode):
    """Training: all four gates in one call, then T_c, each with the noise drawn for the whole step."""
    torch.manual_seed(8)
    cell = NoisyLSTMCell(4, 3, gates="noisy", gate_kwargs={"mode": mode, "c": 2.0}).double().train()
    with torch.no_grad():
        for w in (cell.weight_ih, cell.weight_hh):
            w.mul_(6.0)
    x, h, c = (torch.randn(5, n, dtype=torch.float64) for n in (4, 3, 3))
    torch.manual_seed(9)
    h1, c1 = cell(x, (h, c))
    torch.manual_seed(9)
    xi_gates = torch.randn(1, 5, 12, dtype=torch.float64)[0].numpy()   # the draws the cell makes, in its order
    xi_cell = torch.randn(1, 5, 3, dtype=torch.float64)[0].numpy()
    acts = cell.gate_activations.acts
    pre = (x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh).detach().numpy()

    def act(name, z, xi):
        m = acts[name]
        kind = "sigmoid" if name in "ifo" else "tanh"
        return np_noisy_train(z, m.p.detach().numpy(), kind, m.c.item(), m.alpha, m.mode, xi)

    gi, gf, gg, go = (act(n, z, e) for n, z, e in zip("ifgo", np.split(pre, 4, axis=1),
                                                        np.split(xi_gates, 4, axis=1), strict=True))
    c_exp = gf * c.numpy() + gi * gg
    h_exp = go * act("c", c_exp, xi_cell)
    np.testing.assert_allclose(c1.detach().numpy(), c_exp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h1.detach().numpy(), h_exp, rtol=1e-12, atol=1e-12)


def _np_saturated_noise(pre_sat, xi_source):
    """The ε of one fused gate call: drawn for the saturated units only, in row-major order, while they are at most a
    third of the units; else for every unit."""
    count = int(pre_sat.sum())
    if 3 * count > pre_sat.size:
        return xi_source(pre_sat.shape)
    xi = np.zeros(pre_sat.shape)
    xi[pre_sat] = xi_source((count,))
    return xi


@pytest.mark.parametrize(("mode", "scale"), [("nan", 1.0), ("nah", 1.0), ("nan", 4.0)])
def test_noisy_lstm_time_loop_in_training_matches_eq_4_15(mode, scale):
    """The sequence path (one autograd node per layer, ε drawn where the units saturate) against eq. 4.15 in numpy,
    step by step, with the normals taken from the same generator in the order the loop draws them."""
    torch.manual_seed(16)
    lstm = NoisyLSTM(4, 3, gates="noisy", gate_kwargs={"mode": mode, "c": 2.0}).double().train()
    with torch.no_grad():
        for w in (lstm.weight_ih_l0, lstm.weight_hh_l0):
            w.mul_(scale)
    x = torch.randn(4, 6, 4, dtype=torch.float64) * 1.5
    h0, c0 = torch.randn(1, 6, 3, dtype=torch.float64), torch.randn(1, 6, 3, dtype=torch.float64) * 2
    torch.manual_seed(17)
    out, (h_n, c_n) = lstm(x, (h0, c0))
    torch.manual_seed(17)
    acts = lstm.gate_activations[0].acts
    w_ih, w_hh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()

    def xi_source(shape):
        return torch.randn(shape, dtype=torch.float64).numpy()

    def act(name, z, xi):
        m = acts[name]
        return np_noisy_train(z, m.p.detach().numpy(), "sigmoid" if name in "ifo" else "tanh", m.c.item(), m.alpha,
                              m.mode, xi)

    h, c = h0[0].numpy(), c0[0].numpy()
    branches = set()
    for t in range(x.shape[0]):
        pre = x[t].numpy() @ w_ih.T + h @ w_hh.T + bias
        blocks = np.split(pre, 4, axis=1)
        sat = np.concatenate([np.abs(z) > (1.0 if n == "g" else 2.0) for n, z in zip("ifgo", blocks, strict=True)],
                             axis=1)
        branches.add("none" if not sat.any() else "saturated only" if sat.sum() <= sat.size / 3 else "all")
        xi = np.split(_np_saturated_noise(sat, xi_source), 4, axis=1)
        gi, gf, gg, go = (act(n, z, e) for n, z, e in zip("ifgo", blocks, xi, strict=True))
        c = gf * c + gi * gg
        h = go * act("c", c, _np_saturated_noise(np.abs(c) > 1.0, xi_source))
        np.testing.assert_allclose(out[t].detach().numpy(), h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n[0].detach().numpy(), c, rtol=1e-12, atol=1e-12)
    assert ("saturated only" if scale == 1.0 else "all") in branches  # both ways of drawing are exercised


def test_noisy_lstm_in_its_linear_range_draws_nothing_and_is_the_linear_lstm():
    """No unit saturated: φ = u for every gate (eq. 4.15 with Δ = 0), so the NAN LSTM is the LSTM whose gates are
    the linear u, and no normal is drawn (the generator is left as it was)."""
    torch.manual_seed(18)
    lstm = NoisyLSTM(3, 4, gates="noisy", gate_kwargs={"mode": "nan", "c": 5.0}).double().train()
    x = torch.randn(5, 2, 3, dtype=torch.float64) * 0.1
    state = torch.get_rng_state()
    out, _ = lstm(x)
    assert torch.equal(torch.get_rng_state(), state)
    w_ih, w_hh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    h, c = np.zeros((2, 4)), np.zeros((2, 4))
    for t in range(5):
        zi, zf, zg, zo = np.split(x[t].numpy() @ w_ih.T + h @ w_hh.T + bias, 4, axis=1)
        c = (0.25 * zf + 0.5) * c + (0.25 * zi + 0.5) * zg
        h = (0.25 * zo + 0.5) * c
        np.testing.assert_allclose(out[t].detach().numpy(), h, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert lstm.weight_hh_l0.grad.abs().sum() > 0


def test_fused_noisy_lstm_gradients_by_finite_differences():
    torch.manual_seed(10)
    lstm = NoisyLSTM(3, 2, gates="noisy", gate_kwargs={"mode": "nan", "c": 3.0}, clip_gates=True).double().train()
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(4.0)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True) * 3
    params = [lstm.weight_ih_l0, lstm.gate_activations[0].acts["f"].p, lstm.gate_activations[0].acts["c"].p]

    def run(x, *ps):
        torch.manual_seed(11)  # the same noise at every evaluation
        return lstm(x)[0]

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [NoisyLSTM, NoisyGRU])
def test_clip_gates_bounds_every_gate_and_is_in_the_config(cls):
    torch.manual_seed(12)
    rnn = cls(3, 4, gates="noisy", gate_kwargs={"mode": "nan", "c": 30.0}, clip_gates=True).train()
    free = cls(3, 4, gates="noisy", gate_kwargs={"mode": "nan", "c": 30.0}).train()
    free.load_state_dict(rnn.state_dict())
    x = torch.randn(20, 8, 3) * 5
    assert rnn.config()["clip_gates"] is True
    assert torch.isfinite(rnn(x)[0]).all()
    # outputs of a clipped LSTM/GRU stay in [-1, 1]; the unclipped NAN gates at c = 30 leave it
    assert rnn(x)[0].abs().max() <= 1.0
    assert free(x)[0].abs().max() > 1.0


def test_recurrent_benchmark_rows():
    """``surgeon bench --recurrent``'s library side: one row per variant, timed against nn.LSTM (no speed claim)."""
    from surgeon.bench.recurrent import bench_recurrent

    rows = bench_recurrent((8,), batch=4, steps=3, features=5, repeats=1)
    assert [r.gates for r in rows] == ["soft", "noisy nan", "noisy nan, clipped", "noisy nan, weights x8", "mollified"]
    assert all(r.module == "NoisyLSTM" and r.hidden == 8 and r.ms_per_update > 0 and r.times_torch > 0 for r in rows)
    assert set(rows[0].to_dict()) == {"module", "hidden", "gates", "ms_per_update", "torch_ms_per_update",
                                      "times_torch"}


@pytest.mark.parametrize("cfg", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True}])
def test_soft_lstm_training_gradients_match_torch(cfg):
    """The hand-written LSTM backward (soft gates) against nn.LSTM's: input, initial state and every parameter."""
    torch.manual_seed(13)
    ref = nn.LSTM(5, 6, **cfg).train()
    ours = NoisyLSTM.from_torch(ref, gates="soft")
    n_states = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    x = torch.randn(3, 8, 5) * 2
    h0, c0 = torch.randn(n_states, 3 if cfg.get("batch_first") else 8, 6), torch.randn(n_states, 3 if cfg.get(
        "batch_first") else 8, 6)
    grads = []
    for model in (ref, ours):
        inputs = [t.clone().requires_grad_() for t in (x, h0, c0)]
        out, (h_n, c_n) = model(inputs[0], (inputs[1], inputs[2]))
        (out.sin().sum() + h_n.square().sum() + c_n.cos().sum()).backward()
        grads.append([t.grad for t in inputs] + [p.grad for _, p in sorted(model.named_parameters())])
        model.zero_grad()
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        _close(b, a)


@pytest.mark.parametrize(("gates", "kwargs", "clip"), [("noisy", {"mode": "nan", "c": 3.0}, False),
                                                       ("noisy", {"mode": "nah", "c": 3.0}, True),
                                                       ("hard", {}, False)])
def test_lstm_time_loop_gradients_by_finite_differences(gates, kwargs, clip):
    """gradcheck of the whole time loop: input, initial state, recurrent weight and each gate's p, through the
    outputs and the final state."""
    torch.manual_seed(14)
    lstm = NoisyLSTM(3, 2, gates=gates, gate_kwargs=kwargs, clip_gates=clip).double().train()
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(3.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64) * 3
    h0, c0 = (torch.randn(1, 2, 2, dtype=torch.float64) for _ in range(2))
    params = [lstm.weight_hh_l0]
    if gates == "noisy":
        params += [lstm.gate_activations[0].acts[n].p for n in ("i", "g", "c")]

    def run(x, h0, c0, *ps):
        torch.manual_seed(15)  # the same noise at every evaluation
        out, (h_n, c_n) = lstm(x, (h0, c0))
        return out, h_n, c_n

    inputs = tuple(t.requires_grad_() for t in (x, h0, c0))
    assert torch.autograd.gradcheck(run, (*inputs, *params), eps=1e-6, atol=1e-5)


def test_benchmark_against_a_revision_runs_both_implementations():
    """``surgeon bench --recurrent --against REV``'s library side: the revision's package is extracted and timed
    in its own process (no speed claim); an unknown revision is one clear error."""
    from surgeon.bench.recurrent import VARIANTS, bench_against_revision

    rows = bench_against_revision("HEAD", (4,), batch=2, steps=2, features=3, repeats=1, variants=VARIANTS[1:2])
    assert [(r.module, r.hidden, r.gates, r.revision) for r in rows] == [("NoisyLSTM", 4, "noisy nan", "HEAD")]
    assert rows[0].cpu_ms_per_update > 0 and rows[0].revision_cpu_ms_per_update > 0
    with pytest.raises(RuntimeError, match="cannot read revision"):
        bench_against_revision("no-such-revision", (4,), repeats=1)
