"""``surgeon.reporting.report``: counts checked by hand, shared parameters once, the model left untouched."""

from __future__ import annotations

import io
import json
import math

import torch
from rich.console import Console
from torch import nn

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.reporting.flops import acdc_flops, fastfood_flops
from surgeon.reporting.report import report


def _row(rep, name: str):
    return next(r for r in rep.layers if r.name == name)


def test_counts_bytes_and_flops_by_hand() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), ACDCLinear(16, 16, depth=3, seed=0),
                          FastfoodLinear(16, 40, seed=0), nn.BatchNorm1d(40))
    rep = report(model)
    assert _row(rep, "0").params == 8 * 16 + 16 and _row(rep, "0").flops_per_row == 2 * 8 * 16
    acdc = _row(rep, "2")
    assert acdc.params == 3 * 3 * 16 and acdc.buffers == 2 * 16            # perms: (K-1, N) int64
    assert acdc.flops_per_row == round(3 * (4 * 16 + 5 * 16 * 4)) == acdc_flops(16, 3)
    assert acdc.bytes == {"fp32": 144 * 4 + 32 * 8, "fp16": 144 * 2 + 32 * 8, "bf16": 144 * 2 + 32 * 8}
    ff = _row(rep, "3")                                                     # d = 16, three blocks for 40 outputs
    assert ff.params == 3 * 3 * 16 + 40 and ff.buffers == 3 * 16
    assert ff.flops_per_row == 3 * (2 * 16 * 4 + 3 * 16) == fastfood_flops(16, 3)
    bn = _row(rep, "4")
    assert bn.params == 80 and bn.buffers == 40 + 40 + 1
    assert rep.total.params == sum(p.numel() for p in model.parameters())
    assert rep.total.buffers == sum(b.numel() for b in model.buffers())
    assert json.loads(rep.to_json())["total"]["params"] == rep.total.params


def test_shared_parameters_counted_once_and_baseline_ratio() -> None:
    embed = nn.Embedding(50, 32)
    head = nn.Linear(32, 50, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Linear(32, 32), head)
    rep = report(model, baseline=nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 32), nn.Linear(32, 50)))
    assert rep.total.params == sum(p.numel() for p in model.parameters()) == 50 * 32 + 32 * 32 + 32
    assert _row(rep, "2").params == 0 and "shared with 0.weight" in _row(rep, "2").note
    before = 50 * 32 + 32 * 32 + 32 + 32 * 50 + 50
    assert math.isclose(rep.compression, before / rep.total.params)
    text = io.StringIO()
    Console(file=text, width=160).print(rep)
    assert "→" in text.getvalue() and f"{before:,}" in text.getvalue()


def test_activation_memory_by_hand_and_model_untouched() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.BatchNorm1d(16))
    keys = list(model.state_dict())
    stats = model[2].running_mean.clone()
    x = torch.randn(4, 8)
    rep = report(model, example_inputs=x)
    # Linear saves its input for the weight gradient (4·8 floats); ReLU saves its output (4·16 floats), which
    # is also BatchNorm's input, so that storage counts once; BatchNorm adds its saved mean and invstd (2·16).
    assert _row(rep, "0").activation_bytes == 4 * 8 * 4
    assert _row(rep, "1").activation_bytes == 4 * 16 * 4
    assert rep.total.activation_bytes >= (4 * 8 + 4 * 16) * 4
    assert _row(rep, "0").flops == 4 * 2 * 8 * 16
    assert list(model.state_dict()) == keys
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model[2].running_mean, stats)          # BatchNorm statistics restored


def test_conv_flops_from_output_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    rep = report(model, example_inputs=torch.randn(2, 3, 5, 5))
    assert _row(rep, "0").flops == 2 * 3 * 9 * 8 * 2 * 5 * 5
    assert rep.total.flops == 2 * 3 * 9 * 8 * 50 + 2 * 2 * 200 * 4


def test_str_renders_the_tables() -> None:
    from surgeon.reporting import report as make_report

    dense = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    text = str(make_report(dense))
    assert "0.weight" not in text and "Linear" in text and f"{128 * 128 + 128 + 128 * 10 + 10:,}" in text


def test_batch_one_reaches_a_one_by_one_batch_norm_in_training_mode() -> None:
    """MobileNetV3's head sees a 1×1 map: at batch 1 a training batch norm there has one value per channel. The
    report measures it with running statistics for that call only (torch raises otherwise) and leaves every mode,
    hook and buffer as found."""
    from tests.archs import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rep = report(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert rep.total.activation_bytes > 0 and rep.total.flops > 0
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
