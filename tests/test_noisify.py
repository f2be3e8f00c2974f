"""noisify: every sigmoid/tanh form is found, selection works, fallback, equivalence oracles, checkpoint replay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgeon.configs import NoisifyConfig
from surgeon.errors import SelectionError, TraceFallbackWarning
from surgeon.io.checkpoint import load, save
from surgeon.noise import NoisyGRU, NoisyGRUCell, NoisyHardSigmoid, NoisyHardTanh, NoisyLSTM
from surgeon.surgery.noisify import noisify
from surgeon.surgery.transform import HANDLERS


class Mixed(nn.Module):
    """Every form: nn.Sigmoid, nn.Tanh, torch.sigmoid, F.tanh, x.sigmoid(), nn.LSTM, nn.GRUCell."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 5)
        self.sig = nn.Sigmoid()
        self.th = nn.Tanh()
        self.cell = nn.GRUCell(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        h = self.fc(h[:, -1])
        a = self.sig(h)
        b = torch.sigmoid(h)
        c = self.th(F.tanh(a + b))
        return self.out(self.cell(c.sigmoid()))


class Untraceable(Mixed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        h = self.fc(h[:, -1])
        if h.sum() > 0:       # data-dependent control flow: torch.fx cannot trace this
            h = -h
        a = self.sig(torch.sigmoid(h))
        return self.out(self.cell(self.th(a)))


class LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.gru = nn.GRU(12, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        h, _ = self.gru(torch.tanh(h))
        return self.head(h)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (3, 7), generator=torch.Generator().manual_seed(seed))


def test_finds_every_form_and_records_each() -> None:
    torch.manual_seed(0)
    model = Mixed()
    noisy = noisify(model)
    record = noisy.surgeon_records[-1]
    by_name = {c.name: c for c in record.changes}
    assert set(by_name) == {"lstm", "sig", "th", "cell", "sigmoid", "tanh", "sigmoid_1"}
    assert sorted(record.selected) == sorted(by_name)
    assert (by_name["sigmoid"].source, by_name["sigmoid"].old) == ("function", "torch.sigmoid")
    # F.tanh is ``input.tanh()`` in torch, so fx sees it as the method; x.sigmoid() likewise.
    assert by_name["tanh"].source == "method" and by_name["sigmoid_1"].source == "method"
    assert isinstance(noisy.lstm, NoisyLSTM) and isinstance(noisy.cell, NoisyGRUCell)
    assert isinstance(noisy.sig, NoisyHardSigmoid) and isinstance(noisy.th, NoisyHardTanh)
    assert isinstance(noisy.sigmoid, NoisyHardSigmoid) and isinstance(noisy.tanh, NoisyHardTanh)
    # per-unit p sized from the Linear feeding each site (fc: 5 units), not lazy
    assert by_name["sig"].config["num_features"] == 5 and by_name["tanh"].config["num_features"] == 5
    assert by_name["sig"].config["mode"] == "nah"
    # thesis / nunits.py defaults when c, alpha are None
    assert (noisy.sig.alpha, float(noisy.sig.c)) == (1.1, 0.15)
    assert (noisy.th.alpha, float(noisy.th.c)) == (1.15, 0.5)
    # weights transferred
    assert torch.equal(noisy.lstm.weight_hh_l0, model.lstm.weight_hh_l0)
    assert torch.equal(noisy.cell.weight_ih, model.cell.weight_ih)
    # no original sigmoid/tanh module is left; the forward runs
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh, nn.LSTM, nn.GRUCell)) for m in noisy.modules())
    noisy.train()
    assert noisy(_tokens()).shape == (3, 3)
    assert all(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in (model.sig, model.th))   # original untouched


def test_include_exclude_and_targets() -> None:
    model = Mixed()
    only = noisify(model, include=["sig", "lstm"])
    assert sorted(only.surgeon_records[-1].selected) == ["lstm", "sig"]
    assert isinstance(only.th, nn.Tanh) and isinstance(only.cell, nn.GRUCell)
    skipped = {s.name for s in only.surgeon_records[-1].skipped}
    assert {"th", "cell", "sigmoid", "tanh", "sigmoid_1"} <= skipped

    rest = noisify(model, exclude=r"lstm|cell")
    assert isinstance(rest.lstm, nn.LSTM) and isinstance(rest.cell, nn.GRUCell)
    assert "lstm" not in rest.surgeon_records[-1].selected

    sig_only = noisify(model, targets=("sigmoid",), gates=None)
    assert sorted(sig_only.surgeon_records[-1].selected) == ["sig", "sigmoid", "sigmoid_1"]
    assert isinstance(sig_only.th, nn.Tanh) and isinstance(sig_only.lstm, nn.LSTM)

    with pytest.raises(SelectionError):
        noisify(model, include=["nothing_like_this"])


def test_untraceable_model_falls_back_and_names_unseen_calls() -> None:
    model = Untraceable()
    with pytest.warns(TraceFallbackWarning, match=r"torch\.sigmoid"):
        noisy = noisify(model)
    record = noisy.surgeon_records[-1]
    assert record.traced is False
    assert sorted(record.selected) == ["cell", "lstm", "sig", "th"]
    assert isinstance(noisy.lstm, NoisyLSTM) and isinstance(noisy.sig, NoisyHardSigmoid)
    assert type(noisy) is Untraceable
    assert any("torch.sigmoid" in w for w in record.warnings)
    noisy.eval()
    assert noisy(_tokens()).shape == (3, 3)


def test_soft_gates_reproduce_the_lstm_lm() -> None:
    """Oracle: the original model. Soft gates + no activation sites = torch's recurrences exactly."""
    torch.manual_seed(1)
    model = LM().eval()
    noisy = noisify(model, gates="soft", exclude=["tanh"])
    assert isinstance(noisy.rnn, NoisyLSTM) and isinstance(noisy.gru, NoisyGRU)
    x = _tokens(3)
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), model(x), rtol=1e-5, atol=1e-6)


def test_noise_free_noisy_gates_equal_hard_gate_lm() -> None:
    """With c = 0 and α = 1 (noise off) in eval mode, noisy gates are exactly the hard gates."""
    torch.manual_seed(2)
    model = LM().eval()
    noisy = noisify(model, mode="nan", c=0.0, alpha=1.0, exclude=["tanh"]).eval()
    hard = noisify(model, gates="hard", exclude=["tanh"]).eval()
    x = _tokens(4)
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), hard(x), rtol=1e-6, atol=1e-7)


def test_eval_output_is_the_expectation_form_by_hand() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    noisy = noisify(model, mode="nah").eval()
    act = noisy[1]
    assert act.num_features == 3
    x = torch.randn(5, 4) * 4
    pre = model[0](x).detach().tolist()
    p = act.p.detach().tolist()
    alpha, c = 1.1, 0.15
    expected = []
    for row in pre:
        out = []
        for i, v in enumerate(row):
            h = min(max(0.25 * v + 0.5, 0.0), 1.0)
            u = 0.25 * v + 0.5
            sigma = c * (1.0 / (1.0 + math.exp(-p[i] * (h - u))) - 0.5) ** 2
            d = -(1.0 if v >= 0 else -1.0) * (1.0 if 1.0 - alpha >= 0 else -1.0)
            out.append(alpha * h + (1 - alpha) * u + d * sigma * math.sqrt(2 / math.pi))
        expected.append(out)
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_training_mode_is_noisy() -> None:
    torch.manual_seed(4)
    noisy = noisify(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), mode="nan").train()
    x = torch.randn(64, 4) * 5
    assert not torch.equal(noisy(x), noisy(x))


class ModuleLM(LM):
    """The LM with its tanh as a module, so every noisify site is a module site."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        h, _ = self.gru(self.act(h))
        return self.head(h)


def _round_trip(factory, tmp_path) -> None:
    torch.manual_seed(5)
    noisy = noisify(factory())
    with torch.no_grad():   # weights that differ from any fresh init, so a silent skip would show
        for param in noisy.parameters():
            param.add_(torch.randn_like(param))
    noisy.eval()
    path = tmp_path / "noisy.safetensors"
    save(noisy, path)
    torch.manual_seed(99)
    loaded = load(path, factory()).eval()
    original = noisy.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    x = _tokens(6)
    with torch.no_grad():
        assert torch.equal(noisy(x), loaded(x))
    assert [r.selected for r in loaded.surgeon_records] == [r.selected for r in noisy.surgeon_records]


@pytest.mark.parametrize("factory", [ModuleLM, LM], ids=["module-sites", "with-rewritten-call"])
def test_checkpoint_round_trip_of_a_noisified_lstm_model(factory, tmp_path) -> None:
    assert NoisifyConfig in HANDLERS   # what a checkpoint's recipe replays through
    _round_trip(factory, tmp_path)
