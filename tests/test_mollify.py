"""mollify: one-liner on MLP / CNN / LSTM, annealing and training, p = 0 oracle, blocks, checkpoint replay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgeon.configs import MollifyConfig
from surgeon.io.checkpoint import load, save
from surgeon.noise import Annealer, MollifiedActivation, NoisyLSTM, StochasticSkip
from surgeon.surgery.mollify import mollify
from surgeon.surgery.noisify import noisify
from surgeon.surgery.transform import HANDLERS


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


class SmallConvNet(nn.Module):
    """torchvision-like: features (conv/relu/pool), pooling, flatten, classifier (dropout/linear/relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(inplace=True))   # changes spatial size: no skip
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class LSTMModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.head(F.relu(h))


def _inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        return torch.randn(6, 3, 4, generator=g)
    if kind == "cnn":
        return torch.randn(4, 3, 8, 8, generator=g)
    return torch.randint(0, 20, (3, 5), generator=g)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lstm"])
def test_one_liner_then_annealer_and_training_step(kind: str) -> None:
    torch.manual_seed(0)
    model = {"mlp": _mlp, "cnn": SmallConvNet, "lstm": LSTMModel}[kind]()
    mollified = mollify(model)
    mollified.train()
    annealer = Annealer(mollified, schedule="loss-exp")
    assert annealer.targets, "the annealer found no module"
    optimizer = torch.optim.SGD(mollified.parameters(), lr=0.01)
    x = _inputs(kind)
    out = mollified(x)
    target = torch.zeros_like(out)
    loss = F.mse_loss(out, target)
    loss.backward()
    grads = [p.grad for p in mollified.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    optimizer.step()
    values = annealer.step(loss)
    # eq. 4.31: lower layers anneal faster (smaller p) when there is more than one layer
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    if len(values) > 1:
        assert values[0] < values[-1]
    levels = {float(m.p) for m in mollified.modules() if isinstance(m, (MollifiedActivation, StochasticSkip))}
    # (the engine's dtype adaptation stores the recurrent gates' p in the model's float32, hence approx)
    assert all(any(abs(level - v) < 1e-6 for v in values) for level in levels)


def test_mlp_blocks_layers_and_record() -> None:
    model = _mlp()
    mollified = mollify(model)
    skips = [m for m in mollified if isinstance(m, StochasticSkip)]
    assert [s.layer for s in skips] == [1, 2, 3]
    assert [type(m).__name__ for m in mollified] == ["Flatten", "StochasticSkip", "Identity", "StochasticSkip",
                                                     "Identity", "StochasticSkip", "Identity", "Identity", "Linear"]
    assert [m.kind for m in (s.block[-1] for s in skips)] == ["sigmoid", "tanh", "relu"]
    assert [s.block[-1].layer for s in skips] == [1, 2, 3]
    assert skips[0].block[-1].num_features == 16 and skips[2].block[-1].num_features == 8
    assert skips[0].block[0] is not model[1] and torch.equal(skips[0].block[0].weight, model[1].weight)
    record = mollified.surgeon_records[-1]
    assert record.selected == ["2", "4", "7"]
    names = [c.name for c in record.changes]
    assert names == ["1", "1.block.1", "3", "3.block.1", "5", "5.block.2"]
    for name in names:
        mollified.get_submodule(name)


def test_cnn_skips_only_size_preserving_blocks() -> None:
    net = mollify(SmallConvNet())
    assert isinstance(net.features[0], StochasticSkip) and net.features[0].unit_dim == 1
    assert isinstance(net.features[3], StochasticSkip)
    assert isinstance(net.features[6], nn.Conv2d)               # stride 2: input and output cannot be matched
    assert isinstance(net.features[7], MollifiedActivation)     # mollified all the same, without a skip
    assert net.features[7].unit_dim == 1 and net.features[7].num_features == 16
    assert isinstance(net.classifier[1], StochasticSkip) and net.classifier[1].unit_dim == -1
    assert [net.features[0].layer, net.features[3].layer, net.features[7].layer, net.classifier[1].layer] == [1, 2, 3,
                                                                                                            4]


def test_lstm_gets_mollified_gates_one_layer_each() -> None:
    mollified = mollify(LSTMModel())
    assert isinstance(mollified.lstm, NoisyLSTM) and mollified.lstm.gates == "mollified"
    assert [g.layer for g in mollified.lstm.gate_activations] == [1, 2]
    assert isinstance(mollified.relu, MollifiedActivation) and mollified.relu.layer == 3
    assert mollified.relu.num_features == 12


def test_p_zero_in_eval_is_the_original_mlp_exactly() -> None:
    """Oracle: the original MLP. At the annealer's end state (p = 0) skips and mollifiers are the identity."""
    torch.manual_seed(1)
    model = _mlp()
    with torch.no_grad():
        model(torch.randn(32, 12))   # give BatchNorm running statistics that are not the defaults
    model.eval()
    mollified = mollify(model)
    for module in mollified.modules():
        if isinstance(module, (MollifiedActivation, StochasticSkip)):
            module.set_noise_level(0.0)
    mollified.eval()
    x = _inputs("mlp")
    with torch.no_grad():
        assert torch.equal(mollified(x), model(x))
        # at p = 1 (the start) the network is no longer the original one
        for module in mollified.modules():
            if isinstance(module, (MollifiedActivation, StochasticSkip)):
                module.set_noise_level(1.0)
        assert not torch.allclose(mollified(x), model(x))


def test_skip_false_and_selection() -> None:
    plain = mollify(_mlp(), skip=False)
    assert not any(isinstance(m, StochasticSkip) for m in plain.modules())
    assert isinstance(plain[2], MollifiedActivation) and plain[2].layer == 1
    only_relu = mollify(_mlp(), kinds=("relu",))
    assert only_relu.surgeon_records[-1].selected == ["7"]
    assert isinstance(only_relu[2], nn.Sigmoid) and isinstance(only_relu[5], StochasticSkip)
    excluded = mollify(_mlp(), exclude=["4"])
    assert isinstance(excluded[4], nn.Tanh) and isinstance(excluded[3], nn.Linear)   # no block, no skip


def test_user_forward_calling_children_one_by_one_gets_no_skip() -> None:
    class Manual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = self.net[1](self.net[0](x))
            return self.net[2](feats) + feats.sum(-1, keepdim=True)

    model = Manual()
    mollified = mollify(model, p=0.0)
    assert isinstance(mollified.net[1], MollifiedActivation)
    assert not any(isinstance(m, StochasticSkip) for m in mollified.modules())
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(mollified.eval()(x), model.eval()(x))


def test_noisify_then_mollify_traces_through_noise_modules() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.lstm(x)
            return self.mlp(torch.relu(h))

    with _no_fallback():
        both = mollify(noisify(Net()))
    record = both.surgeon_records[-1]
    assert record.traced
    assert sorted(record.selected) == ["mlp.1", "relu"]
    assert [s.name for s in record.skipped] == ["lstm"]          # one skip, not one per gate
    assert isinstance(both.lstm, NoisyLSTM) and both.lstm.gates == "noisy"
    assert isinstance(both.get_submodule("mlp.0"), StochasticSkip)   # a GraphModule: "mlp" is a plain Module
    assert both(torch.randn(2, 3, 4)).shape == (2, 3, 2)


class _no_fallback:
    """Fail if any TraceFallbackWarning is raised (the noise modules must stay fx leaves)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        from surgeon.errors import TraceFallbackWarning

        warnings.simplefilter("error", TraceFallbackWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("factory", [_mlp, LSTMModel], ids=["mlp", "lstm"])
def test_checkpoint_round_trip_is_bit_exact(factory, tmp_path) -> None:
    assert MollifyConfig in HANDLERS   # what a checkpoint's recipe replays through
    torch.manual_seed(2)
    mollified = mollify(factory())
    annealer = Annealer(mollified, schedule="linear", total_steps=4)
    annealer.step()   # p = 0.75: a value the fresh rebuild does not start with
    with torch.no_grad():
        for param in mollified.parameters():
            param.add_(torch.randn_like(param))
    mollified.eval()
    path = tmp_path / "mollified.safetensors"
    save(mollified, path)
    torch.manual_seed(3)
    loaded = load(path, factory()).eval()
    assert mollified.state_dict().keys() == loaded.state_dict().keys()
    for key, value in mollified.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    layers = [(n, m.layer) for n, m in mollified.named_modules() if hasattr(m, "layer")]
    assert layers == [(n, m.layer) for n, m in loaded.named_modules() if hasattr(m, "layer")]
    x = _inputs("mlp" if factory is _mlp else "lstm")
    with torch.no_grad():
        assert torch.equal(mollified(x), loaded(x))
