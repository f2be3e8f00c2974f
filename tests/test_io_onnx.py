"""ONNX export of converted models: onnxruntime parity at two batch sizes, compact files, export-time lowering."""

from __future__ import annotations

import importlib
import math

import numpy as np
import onnx
import pytest
import scipy.fft
import torch
from torch import nn

from surgeon.io.lowering import LoweredACDC, LoweredFastfood, dct_factors, lower_for_export
from surgeon.io.onnx_export import ExportError, export_onnx, onnx_latency, param_bytes
from surgeon.layers import ACDCLinear, FastfoodLinear
from surgeon.ops.hadamard import hadamard_matrix

_MB = 1 << 20


def _convert(model: nn.Module, cls: type[nn.Module], include: list[str] | None = None, **kwargs) -> nn.Module:
    """Swap nn.Linear layers by hand (export must not depend on how the surgery was done)."""
    for i, (name, module) in enumerate(list(model.named_modules())):
        if isinstance(module, nn.Linear) and (include is None or name in include):
            parent, _, leaf = name.rpartition(".")
            new = cls.from_linear(module, seed=i, **kwargs)
            with torch.no_grad():   # move off the init so bias / permutation bugs cannot hide behind zeros
                for p in new.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def _size_limit(model: nn.Module) -> int:
    return int(1.1 * param_bytes(model)) + _MB


def _largest_tables(path: str) -> tuple[int, int]:
    """(largest floating constant, largest constant of any dtype) in the file, in elements."""
    graph = onnx.load(path).graph
    tensors = list(graph.initializer)
    tensors += [a.t for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    sizes = [(math.prod(t.dims), t.data_type in floating) for t in tensors]
    return max((n for n, f in sizes if f), default=0), max((n for n, _ in sizes), default=0)


def _largest_param(model: nn.Module) -> int:
    return max(p.numel() for p in model.parameters())


# --- the lowered modules compute the layers' maps (float64, against the dense thesis formula) ---------------

@pytest.mark.parametrize("n_in, n_out, depth, activation, permute, factors", [
    (100, 60, 3, "relu", True, None),         # N = 100: one level (in-graph 100×100 table), in > out
    (30, 96, 4, "leaky_relu", True, (8, 12)),  # two levels, in < out
    (96, 96, 2, "tanh", True, (4, 6, 4)),      # three levels: a complex middle level
    (48, 96, 2, "relu", True, (2, 3, 4, 4)),   # four levels
    (97, 97, 2, "tanh", True, None),          # prime N
    (64, 64, 1, None, False, (8, 8)),         # single linear factor
    (600, 512, 3, "sigmoid", False, None),     # the default split of a larger N
])
def test_lowered_acdc_matches_scipy_cascade(n_in, n_out, depth, activation, permute, factors):
    torch.manual_seed(0)
    layer = _convert(nn.Sequential(nn.Linear(n_in, n_out)), ACDCLinear, depth=depth, activation=activation,
                     permute=permute)[0].double()
    x = torch.randn(4, 3, n_in, dtype=torch.float64)
    # independent oracle: scipy's orthonormal DCT-II/III, the thesis cascade written out
    n = layer.size
    h = np.pad(x.reshape(-1, n_in).numpy(), [(0, 0), (0, n - n_in)])
    a, d, b = (t.detach().numpy() for t in (layer.a, layer.d, layer.b))
    act = {"relu": lambda v: np.maximum(v, 0), "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
           "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "none": lambda v: v}[layer.activation]
    for k in range(depth):
        h = scipy.fft.idct(scipy.fft.dct(h * a[k], norm="ortho") * d[k] + b[k], norm="ortho")
        if k < depth - 1:
            h = act(h)
            if layer.perms is not None:
                h = h[:, layer.perms[k].numpy()]
    expected = torch.from_numpy(h[:, :n_out]).reshape(4, 3, n_out)
    got = LoweredACDC(layer, factors)(x)
    assert got.shape == (4, 3, n_out)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factors", [(32, 32), (8, 8, 16)])
def test_lowered_factor_reshapes_only_around_its_gather(tmp_path, factors):
    """Every reshape is a node onnxruntime dispatches per call: a factor may add only the two around its gather
    (into the DFT view and back to flat rows), however many levels its DCT has beyond the first."""
    counts = []
    for depth in (2, 4):
        layer = ACDCLinear(1024, 1024, depth=depth, seed=0).eval()
        path = tmp_path / f"acdc{depth}.onnx"
        torch.onnx.export(LoweredACDC(layer, factors), (torch.randn(2, 1024),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False, dynamo=False)
        counts.append(sum(node.op_type == "Reshape" for node in onnx.load(str(path)).graph.node))
    levels_beyond_two = len(factors) - 2    # each deeper level views re and im afresh, forward and adjoint
    assert counts[1] - counts[0] == 2 * (2 + 4 * levels_beyond_two)


@pytest.mark.parametrize("n_in, n_out, adaptive", [(100, 60, True), (64, 300, False), (300, 1000, True)])
def test_lowered_fastfood_matches_dense_formula(n_in, n_out, adaptive):
    torch.manual_seed(0)
    layer = _convert(nn.Sequential(nn.Linear(n_in, n_out)), FastfoodLinear, adaptive=adaptive)[0].double()
    x = torch.randn(5, n_in, dtype=torch.float64)
    h = hadamard_matrix(layer.d, dtype=torch.float64, normalized=True)
    xp = nn.functional.pad(x, (0, layer.d - n_in))
    blocks = []
    for j in range(layer.blocks):   # y_j = S H G Π H B x, eq. 3.9, with (Π v)[i] = v[perm[i]]
        v = (xp * layer.binary[j]) @ h
        v = v[:, layer.perm[j]]
        blocks.append(((v * layer.gauss[j]) @ h) * layer.scale[j])
    expected = torch.cat(blocks, -1)[:, :n_out] + layer.bias
    torch.testing.assert_close(LoweredFastfood(layer)(x), expected.detach(), rtol=1e-10, atol=1e-10)


def test_dct_factors_and_lowering_keeps_original():
    assert dct_factors(9216) == (96, 96) and dct_factors(4096) == (64, 64)
    assert dct_factors(97) == (97,) and len(dct_factors(32768)) == 3
    for n in (97, 512, 1000, 9216, 25088):
        assert math.prod(dct_factors(n)) == n
    with pytest.raises(ValueError, match="multiply"):
        LoweredACDC(ACDCLinear(6, 6, depth=1), (2, 2))
    model = _convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), ACDCLinear, depth=2)
    lowered = lower_for_export(model)
    assert isinstance(model[0], ACDCLinear) and isinstance(lowered[0], LoweredACDC)
    assert not lowered.training


# --- ONNX export: parity at two batch sizes and the size bound ---------------------------------------------

def _mlp(cls: type[nn.Module], **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 512), nn.ReLU(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))
    return _convert(model, cls, include=["0", "2"], **kwargs).eval()


@pytest.mark.parametrize("cls, kwargs", [(ACDCLinear, {"depth": 12}), (FastfoodLinear, {})])
def test_export_mlp_parity_and_size(tmp_path, cls, kwargs):
    model = _mlp(cls, **kwargs)
    result = export_onnx(model, torch.randn(4, 300), tmp_path / "mlp.onnx")
    assert result.checked_batches == [4, 9]
    assert result.max_rel_error <= 1e-4 and result.passed
    assert result.file_bytes <= _size_limit(model) and result.within_size_limit
    # no N×N transform table in the file: no floating constant bigger than the model's biggest parameter
    # (the dense 512→10 head), integer constants only the (K+1)×N int16 gather indices
    largest_float, largest_any = _largest_tables(result.path)
    assert largest_float <= _largest_param(model)
    assert largest_any <= 13 * 512 < 512 * 512
    # the file holds the same function: also at a batch size never seen during export
    import onnxruntime as ort

    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    x = torch.randn(17, 300)
    with torch.no_grad():
        ref = model(x)
    (out,) = session.run(None, {"input_0": x.numpy()})
    assert np.abs(out - ref.numpy()).max() <= 1e-4 * ref.abs().max().item()


@pytest.mark.parametrize("cls, kwargs", [(ACDCLinear, {"depth": 12}), (FastfoodLinear, {})])
def test_export_alexnet_classifier(tmp_path, cls, kwargs):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None)
    dense_head_bytes = param_bytes(model.classifier)
    model = _convert(model, cls, **kwargs).eval()
    head = model.classifier   # 9216–4096–4096–1000 with dropout (identity in eval mode)
    result = export_onnx(head, torch.randn(2, 9216), tmp_path / "head.onnx")
    assert result.max_rel_error <= 1e-4
    assert result.file_bytes <= _size_limit(head)
    assert result.file_bytes < dense_head_bytes / 40    # 234.5 MB of dense fp32 weights before surgery
    largest_float, largest_any = _largest_tables(result.path)
    assert largest_float <= _largest_param(head)
    assert largest_any <= 13 * 9216


class _Counter(nn.Module):
    """Count-unique-elements style model (thesis Table 4.5): LSTM, time-average pooling, small MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(11, 32, batch_first=True)
        self.fc1, self.act1 = nn.Linear(32, 96), nn.Sigmoid()
        self.fc2, self.act2 = nn.Linear(96, 96), nn.Tanh()
        self.out = nn.Linear(96, 27)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.out(self.act2(self.fc2(self.act1(self.fc1(h.mean(1))))))


@pytest.mark.parametrize("noise", ["noisify", "mollify"])
def test_export_noisy_and_mollified_lstm_models(tmp_path, noise):
    import warnings

    from surgeon.surgery.convert import convert
    from surgeon.surgery.mollify import mollify
    from surgeon.surgery.noisify import noisify

    torch.manual_seed(0)
    model = convert(_Counter(), "acdc", include=["fc2"], depth=4, seed=0)   # structured + noisy in one model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # fx cannot trace the LSTM tuple output: module-tree fallback
        model = noisify(model, "nah") if noise == "noisify" else mollify(model, c=0.5)
    x = torch.randn(3, 12, 11)   # fixed sequence length (the trace unrolls time)
    model(x)                      # materialise lazily sized per-unit parameters, if any
    model.eval()
    assert type(model.lstm).__name__ != "LSTM"
    result = export_onnx(model, x, tmp_path / "lstm.onnx")
    assert result.max_rel_error <= 1e-4 and result.checked_batches == [3, 7]
    assert result.file_bytes <= _size_limit(model)


def test_dynamo_exporter_and_fixed_batch(tmp_path):
    model = _convert(nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 24)), ACDCLinear, depth=3).eval()
    fixed = export_onnx(model, torch.randn(3, 24), tmp_path / "fixed.onnx", dynamic_batch=False)
    assert fixed.checked_batches == [3] and fixed.passed
    dims = onnx.load(fixed.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 24]
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("onnxscript missing")
    result = export_onnx(model, torch.randn(3, 24), tmp_path / "dynamo.onnx", exporter="dynamo")
    assert result.passed and result.checked_batches == [3, 7]


def test_export_errors_are_clear(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(model, torch.randn(2, 4), tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(ExportError, match="tensor or a tuple of tensors"):
        export_onnx(model, [1, 2], tmp_path / "x.onnx")

    class Sneaky(nn.Module):   # torch and the traced graph disagree: the check must catch it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if torch.jit.is_tracing() else x * 3

    with pytest.raises(ExportError, match="max relative error"):
        export_onnx(Sneaky(), torch.randn(2, 4), tmp_path / "sneaky.onnx")


def test_onnx_latency_reports_both_runtimes(tmp_path):
    model = _mlp(FastfoodLinear)
    result = export_onnx(model, torch.randn(8, 300), tmp_path / "lat.onnx")
    numbers = onnx_latency(model, result.path, torch.randn(8, 300), repeats=3, warmup=1, threads=1)
    assert numbers["onnxruntime_ms"] > 0 and numbers["torch_ms"] > 0 and numbers["batch"] == 8
