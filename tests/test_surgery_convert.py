"""``convert`` on real models: torchvision AlexNet / VGG11, a TransformerEncoder, an LSTM language model, and the
awkward cases (F.linear, untraceable forward, shared and tied layers, dtype / mode / requires_grad)."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models import alexnet, vgg11

from surgeon.errors import ConfigError, TraceFallbackWarning
from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.reporting.report import report
from surgeon.surgery.convert import convert
from surgeon.surgery.record import SurgeryRecord, records


def _layer_params(rep, name: str) -> int:
    return next(r.params for r in rep.layers if r.name == name)


def _structure(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_alexnet_acdc_parameter_counts_match_hand_arithmetic() -> None:
    model = alexnet()
    start = time.perf_counter()
    out = convert(model, "acdc", depth=12, seed=0)
    print(f"\nalexnet acdc conversion: {time.perf_counter() - start:.2f} s")
    rep = report(out, baseline=model)
    assert _layer_params(rep, "classifier.1") == 3 * 12 * 9216
    assert _layer_params(rep, "classifier.4") == 3 * 12 * 4096
    assert _layer_params(rep, "classifier.6") == 4096 * 1000 + 1000
    dense_fc = 9216 * 4096 + 4096 + 4096 * 4096 + 4096
    assert rep.total.params == 61_100_840 - dense_fc + 3 * 12 * (9216 + 4096)
    assert rep.total.params == sum(p.numel() for p in out.parameters())
    assert rep.baseline is not None and rep.baseline.total.params == 61_100_840
    record = records(out)[-1]
    assert record.selected == ["classifier.1", "classifier.4"]
    assert [c.config["seed"] for c in record.changes] == [0, 1]    # seed + candidate index
    skip = next(s for s in record.skipped if s.name == "classifier.6")
    assert "output layer" in skip.reason
    assert type(out) is type(model) and isinstance(model.classifier[1], nn.Linear)
    with torch.no_grad():
        assert out(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_alexnet_acdc_training_step() -> None:
    """AlexNet's ReLU(inplace=True) follows each converted layer: the truncated output must not be a view."""
    out = convert(alexnet(), "acdc", depth=12, seed=0)
    out(torch.randn(1, 3, 224, 224)).sum().backward()
    for name in ("classifier.1", "classifier.4"):
        grad = out.get_submodule(name).a.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_alexnet_fastfood_forward_backward() -> None:
    out = convert(alexnet(), "fastfood", seed=0)
    assert isinstance(out.classifier[1], FastfoodLinear) and isinstance(out.classifier[4], FastfoodLinear)
    y = out(torch.randn(2, 3, 224, 224))
    y.sum().backward()
    assert y.shape == (2, 1000) and out.classifier[1].gauss.grad is not None
    d1, d4 = 16384, 4096        # next powers of two of 9216 and 4096; one block each
    assert sum(p.numel() for p in out.classifier[1].parameters()) == 3 * d1 + 4096
    assert sum(p.numel() for p in out.classifier[4].parameters()) == 3 * d4 + 4096


def test_vgg11_acdc_and_fastfood_small_input() -> None:
    x = torch.randn(1, 3, 64, 64)      # the adaptive avgpool makes 64x64 inputs valid and keeps this fast
    acdc = convert(vgg11(), "acdc", depth=12, seed=3)
    assert isinstance(acdc.classifier[0], ACDCLinear) and acdc.classifier[0].size == 25088
    assert sum(p.numel() for p in acdc.classifier[0].parameters()) == 3 * 12 * 25088
    assert isinstance(acdc.classifier[6], nn.Linear)
    with torch.no_grad():
        assert acdc(x).shape == (1, 1000)
    ff = convert(vgg11(), "fastfood", seed=3)
    ff(x).sum().backward()
    assert ff.classifier[3].bias.grad is not None


def test_replay_rebuilds_identical_structure() -> None:
    out = convert(alexnet(), "acdc", depth=8, seed=5, init_std=0.05, exclude=["classifier.4"])
    record = SurgeryRecord.from_dict(json.loads(json.dumps(records(out)[-1].to_dict())))
    fresh = convert(alexnet(), record.rebuild_config().for_replay(), include=record.selected)
    assert _structure(fresh) == _structure(out)
    assert [c.config for c in records(fresh)[-1].changes] == [c.config for c in record.changes]
    fresh.load_state_dict(out.state_dict(), strict=True)
    torch.testing.assert_close(fresh.classifier[1].perms, out.classifier[1].perms)


def test_transformer_encoder_converts_feed_forward_and_skips_attention() -> None:
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert(model, "acdc", depth=4, seed=0)
    assert sum(issubclass(w.category, TraceFallbackWarning) for w in caught) == 1
    record = records(out)[-1]
    assert sorted(record.selected) == ["layers.0.linear1", "layers.0.linear2", "layers.1.linear1", "layers.1.linear2"]
    reasons = {s.name: s.reason for s in record.skipped}
    assert "in_proj_weight" in reasons["layers.0.self_attn"]
    assert "F.multi_head_attention_forward" in reasons["layers.1.self_attn.out_proj"]
    assert isinstance(out.layers[1].self_attn.out_proj, nn.Linear)
    x = torch.randn(2, 5, 64)
    y = out(x)
    y.sum().backward()
    assert y.shape == x.shape and out.layers[0].linear1.a.grad is not None


class LanguageModel(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 64, tie: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        if tie:
            self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.decoder(hidden)


def test_lstm_language_model_output_layer_by_name_and_tied_head_refused() -> None:
    tokens = torch.randint(0, 100, (2, 7))
    out = convert(LanguageModel(), "fastfood", include=["decoder"], seed=0)
    assert isinstance(out.decoder, FastfoodLinear) and type(out) is LanguageModel
    y = out(tokens)
    y.sum().backward()
    assert y.shape == (2, 7, 100)
    tied = LanguageModel(tie=True)
    with pytest.warns(UserWarning, match="nothing was replaced"):
        kept = convert(tied, "acdc", include=["decoder"])
    reason = next(s.reason for s in records(kept)[-1].skipped if s.name == "decoder")
    assert "tied" in reason and "embed.weight" in reason
    assert kept.decoder.weight is kept.embed.weight


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(128, 96) * 0.1)
        self.b = nn.Parameter(torch.zeros(128))
        self.head = nn.Linear(128, 10)
        self.spare = nn.Parameter(torch.ones(3))    # unused in forward
        self.mix = nn.Parameter(torch.eye(128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.w, self.b)
        return self.head(F.linear(torch.relu(h), self.mix * 0.5) + h)   # a computed weight: not convertible


class SharedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.again = self.fc                        # one module under two names
        self.out = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(torch.relu(self.fc(x))))


def test_functional_linear_becomes_graph_module_and_keeps_other_keys() -> None:
    model = FunctionalNet()
    out = convert(model, "acdc", depth=4, seed=2)
    assert isinstance(out, fx.GraphModule)
    record = records(out)[-1]
    change = next(c for c in record.changes if c.source == "function")
    assert change.old == "F.linear" and change.params_before == 128 * 96 + 128
    assert any("computed in forward" in s.reason for s in record.skipped)
    keys = set(out.state_dict())
    assert {"spare", "mix", "head.weight", "head.bias"} <= keys and "w" not in keys and "b" not in keys
    assert out(torch.randn(3, 96)).shape == (3, 10)
    fresh = convert(FunctionalNet(), record.rebuild_config().for_replay(), include=record.selected)
    assert _structure(fresh) == _structure(out)


def test_shared_linear_gets_one_replacement_and_keeps_dtype_mode_grad() -> None:
    model = SharedNet().double().eval()
    model.fc.weight.requires_grad_(False)
    model.fc.bias.requires_grad_(False)
    out = convert(model, "acdc", depth=2, seed=0)
    assert out.fc is out.again and isinstance(out.fc, ACDCLinear)
    assert out.fc.a.dtype == torch.float64 and not out.fc.training and not out.fc.a.requires_grad
    change = records(out)[-1].changes[0]
    assert "again" in change.note
    assert out(torch.randn(2, 64, dtype=torch.float64)).dtype == torch.float64


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.w = nn.Parameter(torch.randn(64, 64))
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            x = F.linear(x, self.w)
        return self.head(self.fc(x))


def test_untraceable_model_falls_back_and_keeps_keys() -> None:
    model = DataDependent()
    with pytest.warns(TraceFallbackWarning, match=r"DataDependent\.forward:\d+ F\.linear"):
        out = convert(model, "acdc", depth=2)
    assert type(out) is DataDependent and isinstance(out.fc, ACDCLinear)
    assert {"w", "head.weight", "head.bias"} <= set(out.state_dict())
    assert records(out)[-1].traced is False
    assert out(torch.randn(2, 64)).shape == (2, 2)


def test_bad_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        convert(SharedNet(), "acdc", colour="red")
    with pytest.raises(ConfigError):
        convert(SharedNet(), "acdc", depth="auto")
    with pytest.raises(ConfigError):
        convert(SharedNet(), "dense")
