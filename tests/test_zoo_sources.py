"""Linear sources beyond nn.Linear: Hugging Face Conv1D (weight stored (in, out)) and opt-in 1×1 convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.errors import ConfigError
from surgeon.layers.pointwise import PointwiseConv

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _probe_dense(layer: nn.Module, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (out, in), b) of a linear (..., in) -> (..., out) map, read off by feeding it 0 and the unit vectors."""
    with torch.no_grad():
        probes = torch.cat([torch.zeros(1, features), torch.eye(features)]).double()
        out = layer.double()(probes)
        layer.float()
    return (out[1:] - out[0]).T.float(), out[0].float()


class Projections(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = Conv1D(96, 64)       # nf=96 outputs, nx=64 inputs
        self.down = Conv1D(64, 96)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


def test_hf_conv1d_is_a_linear_site_read_in_its_own_orientation() -> None:
    torch.manual_seed(0)
    model = Projections()
    out = surgeon.convert(model, "acdc", depth=4, seed=0, activation=None)
    changes = {c.name: c for c in surgeon.records(out)[-1].changes}
    assert set(changes) == {"up", "down"}
    assert changes["up"].old == "Conv1D(64, 96, bias=True)" and changes["up"].params_before == 64 * 96 + 96
    assert (out.up.in_features, out.up.out_features) == (64, 96)
    assert (out.down.in_features, out.down.out_features) == (96, 64)
    x = torch.randn(3, 5, 64)
    assert out(x).shape == (3, 5, 8) and torch.isfinite(out(x)).all()


def test_fit_sees_conv1d_as_the_map_it_computes() -> None:
    """Fitting a Conv1D gives what fitting the nn.Linear computing the same map gives (weight transposed)."""
    torch.manual_seed(1)
    conv = Conv1D(48, 48)
    twin = nn.Linear(48, 48)
    with torch.no_grad():
        conv.bias.normal_()
        twin.weight.copy_(conv.weight.T)
        twin.bias.copy_(conv.bias)
    x = torch.randn(7, 48)
    torch.testing.assert_close(conv(x), twin(x))     # the oracle: transformers' own forward
    fitted = [surgeon.convert(nn.Sequential(m, nn.ReLU()), "acdc", depth=4, init="fit", seed=3, fit_steps=60,
                              min_features=8, skip_output=False, quiet=True) for m in (conv, twin)]
    errors = [surgeon.records(f)[-1].changes[0].fit_error for f in fitted]
    assert errors[0] == pytest.approx(errors[1], rel=1e-4)
    torch.testing.assert_close(fitted[0][0].a, fitted[1][0].a, atol=1e-4, rtol=1e-4)
    # A transposed reading would fit W.T instead: its error on the true map is far larger.
    w, b = _probe_dense(fitted[0][0], 48)
    truth = conv(x)
    assert ((x @ w.T + b - truth).norm() / truth.norm()).item() < 1.5 * errors[0] + 0.05


class Pointwise(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x)).flatten(2).mean(-1)[..., :8])


@pytest.mark.parametrize("kind", ["acdc", "fastfood"])
@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(40, 72, 1), (2, 40, 5, 6)),
    (nn.Conv2d(40, 72, 1), (40, 5, 6)),                      # unbatched
    (nn.Conv2d(40, 72, 1, stride=2, bias=False), (2, 40, 7, 6)),
    (nn.Conv1d(40, 72, 1, stride=(3,)), (2, 40, 11)),
    (nn.Conv2d(72, 40, (1, 1), padding="valid", dilation=3), (1, 72, 4, 4)),
])
def test_pointwise_conv_is_a_channel_map_for_every_layout(kind: str, conv: nn.Module, shape: tuple[int, ...]) -> None:
    model = Pointwise(conv)
    out = surgeon.convert(model, kind, seed=0, targets={"linear", "conv1x1"}, min_features=16,
                          **({"activation": None, "depth": 3} if kind == "acdc" else {}))
    assert isinstance(out.conv, PointwiseConv)
    assert surgeon.records(out)[-1].selected == ["conv"]
    w, b = _probe_dense(out.conv.layer, conv.in_channels)
    x = torch.randn(shape)
    spatial = len(conv.kernel_size)
    weight = w.reshape(*w.shape, *([1] * spatial))
    oracle = getattr(F, f"conv{spatial}d")(x, weight, b if conv.bias is not None else None, stride=conv.stride)
    if conv.bias is None:
        assert out.conv.layer.bias is None
    torch.testing.assert_close(out.conv(x), oracle, atol=1e-5, rtol=1e-4)
    dense = out.conv.to_dense()
    assert type(dense) is type(conv) and dense.stride == conv.stride
    torch.testing.assert_close(dense(x), oracle, atol=1e-5, rtol=1e-4)
    channels_last = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    torch.testing.assert_close(out.conv(channels_last), oracle, atol=1e-5, rtol=1e-4)


def test_conv1x1_is_opt_in_and_unsupported_convs_say_why() -> None:
    model = nn.Sequential(nn.Conv2d(32, 64, 1), nn.Conv2d(64, 64, 3), nn.Conv2d(64, 64, 1, groups=2),
                          nn.Conv2d(64, 64, 1, padding=1), nn.Conv2d(64, 64, 1), nn.ReLU())
    with pytest.raises(surgeon.SelectionError, match="found nothing to replace"):
        surgeon.convert(model, "acdc")
    out = surgeon.convert(model, "acdc", depth=2, targets=["conv1x1"], min_features=16, skip_output=False)
    record = surgeon.records(out)[-1]
    assert record.selected == ["0", "4"] and record.config["targets"] == ["conv1x1"]
    reasons = {s.name: s.reason for s in record.skipped}
    assert "1" not in reasons                     # a 3×3 convolution is no linear site at all
    assert "groups=2" in reasons["2"] and "padding" in reasons["3"]
    assert out(torch.randn(1, 32, 6, 6)).shape == (1, 64, 6, 6)
    with pytest.raises(ConfigError, match="targets"):
        surgeon.convert(model, "acdc", targets={"conv3x3"})


def test_fit_captures_conv_inputs_channel_last() -> None:
    """Calibration rows are per-position channel vectors: inputs confined to a 3-dim channel subspace stay there,
    so a fitted cascade matches the conv on them far better than on generic inputs."""
    torch.manual_seed(2)
    conv = nn.Conv2d(32, 32, 1)
    basis = torch.randn(32, 3)
    images = [torch.einsum("ck,nkhw->nchw", basis, torch.randn(4, 3, 8, 8)) for _ in range(4)]
    out = surgeon.convert(nn.Sequential(conv, nn.ReLU()), "acdc", depth=6, init="fit", calibration=images,
                          targets={"conv1x1"}, min_features=8, seed=0, fit_steps=150, quiet=True, skip_output=False)
    fit_error = surgeon.records(out)[-1].changes[0].fit_error
    held_out = torch.einsum("ck,nkhw->nchw", basis, torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        def error(x: torch.Tensor) -> float:
            return ((out[0](x) - conv(x)).norm() / conv(x).norm()).item()
        inside, generic = error(held_out), error(torch.randn(2, 32, 8, 8))
    assert inside < 1.5 * fit_error + 0.02 and inside < 0.5 * generic


class ReadsWeightDtype(nn.Module):
    """Like T5's feed-forward: forward reads ``self.wo.weight.dtype``; and it cannot be traced (data-dependent)."""

    def __init__(self) -> None:
        super().__init__()
        self.wi = nn.Linear(64, 64)
        self.wo = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x * 0
        h = torch.relu(self.wi(x)).to(self.wo.weight.dtype)
        return self.head(self.wo(h))


def test_module_tree_fallback_keeps_layers_whose_weights_forward_reads() -> None:
    with pytest.warns(surgeon.TraceFallbackWarning):
        out = surgeon.convert(ReadsWeightDtype(), "acdc", depth=2)
    record = surgeon.records(out)[-1]
    assert record.selected == ["wi"]
    reason = {s.name: s.reason for s in record.skipped}["wo"]
    assert "ReadsWeightDtype.forward" in reason and "self.wo.weight" in reason
    assert out(torch.randn(2, 64)).shape == (2, 4)
