"""The zoo matrix: real timm / torchvision / transformers architectures (tiny configurations, built offline) and an
LSTM LM, each converted with ACDC and with Fastfood.

For every model × kind: forward and backward are finite, the report's totals equal the true parameter counts
(and the record's per-site counts add up to them), and save → load onto a freshly built model is bit-exact in
eval mode. Per family one ONNX export is checked by onnxruntime and one ``torch.compile`` forward against eager.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

import surgeon
from surgeon.zoo_table import MODELS, ZooModel, by_name, convert_entry, output_tensor, parameter_count

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")

KINDS = ("acdc", "fastfood")
CASES = [pytest.param(entry, kind, id=f"{entry.name}-{kind}") for entry in MODELS for kind in KINDS]


def _fresh(entry: ZooModel, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return entry.build("tiny")


@functools.cache
def _converted(name: str, kind: str) -> tuple[nn.Module, nn.Module]:
    """(original, converted), built once per module run and shared by the checks below (read-only use)."""
    return convert_entry(by_name(name), "tiny", kind, _fresh(by_name(name)))


def _run(model: nn.Module, entry: ZooModel) -> torch.Tensor:
    return output_tensor(model(*entry.inputs("tiny")))


@pytest.mark.parametrize("entry,kind", CASES)
def test_forward_backward_finite_and_counts_add_up(entry: ZooModel, kind: str) -> None:
    original, converted = _converted(entry.name, kind)
    record = surgeon.records(converted)[-1]
    assert record.changes, f"{entry.name}: nothing converted ({record.skipped})"
    converted.train()
    out = _run(converted, entry)
    assert torch.isfinite(out).all()
    out.float().sum().backward()   # not a square: timm zero-initialises some heads
    grads = [p.grad for p in converted.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    converted.zero_grad(set_to_none=True)

    before, after = parameter_count(original), parameter_count(converted)
    assert after < before
    rep = surgeon.report(converted, baseline=original)
    assert rep.total.params == after and rep.baseline.total.params == before
    # The record's per-site counts explain the whole difference.
    assert before - sum(c.params_before for c in record.changes) + sum(c.params_after for c in record.changes) == after


@pytest.mark.parametrize("entry,kind", CASES)
def test_save_load_is_bit_exact_in_eval_mode(entry: ZooModel, kind: str, tmp_path) -> None:
    _, converted = _converted(entry.name, kind)
    path = tmp_path / "model.safetensors"
    surgeon.save(converted, path)
    again = surgeon.load(path, _fresh(entry, seed=1)).eval()
    converted.eval()
    with torch.no_grad():
        assert torch.equal(_run(converted, entry), _run(again, entry))
    assert [r.to_dict() for r in surgeon.records(again)] == [r.to_dict() for r in surgeon.records(converted)]


class _MainOutput(nn.Module):
    """The model's main output tensor (HF models return ModelOutput objects and key/value caches)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kwargs = {"use_cache": False} if hasattr(self.model, "config") else {}
        return output_tensor(self.model(*args, **kwargs))


# One per family: a transformer, a net with strided pointwise convs (PointwiseConv), an HF encoder, the LSTM.
ONNX_CASES = [("ViT", "acdc"), ("ResNet-18", "fastfood"), ("BERT", "acdc"), ("LSTM LM", "fastfood")]


@pytest.mark.parametrize("name,kind", ONNX_CASES)
def test_onnx_export_matches_onnxruntime(name: str, kind: str, tmp_path) -> None:
    entry = by_name(name)
    _, converted = _converted(name, kind)
    model = _MainOutput(converted.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = surgeon.export_onnx(model, entry.inputs("tiny"), tmp_path / "model.onnx")
    assert result.passed and result.max_rel_error <= 1e-4 and result.checked_batches == [2, 5]


def test_hf_gpt2_exports_as_it_is_through_the_dynamo_fallback(tmp_path) -> None:
    """The HF model itself, not a wrapper: it returns a ModelOutput and has ``config.use_cache``, and its mask code
    calls ``aten::diff``, which the TorchScript exporter lacks, so ``exporter="auto"`` falls back to dynamo."""
    entry = by_name("GPT-2")
    _, converted = _converted("GPT-2", "acdc")
    converted.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = surgeon.export_onnx(converted, entry.inputs("tiny"), tmp_path / "gpt2.onnx")
    assert result.exporter == "dynamo" and result.output_names == ["output_0"]
    assert result.passed and result.max_rel_error <= 1e-4 and result.checked_batches == [2, 5]
    assert converted.config.use_cache, "the model's own cache setting is restored"


COMPILE_CASES = [("ResMLP", "fastfood"), ("MobileNetV3-small", "acdc"), ("GPT-2", "fastfood"), ("LSTM LM", "acdc")]


@pytest.mark.parametrize("name,kind", COMPILE_CASES)
def test_torch_compile_forward_matches_eager(name: str, kind: str) -> None:
    entry = by_name(name)
    _, converted = _converted(name, kind)
    model = converted.eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(_run(compiled, entry), _run(model, entry), atol=1e-5, rtol=1e-5)
