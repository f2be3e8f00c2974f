"""Records that always replay: no-op steps, chained surgery in any order (API and CLI), copies and wrappers.

Regression tests for the three failures of issue 14's "Why": GPT-2 converted nothing (its projections are HF
Conv1D), a surgery that changed nothing could not be reloaded, and chained surgery lost its earlier steps.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import surgeon
from surgeon.cli.app import app
from surgeon.io.checkpoint import read_checkpoint


class Net(nn.Module):
    """Linear maps for convert, a relu for mollify, sigmoid/tanh calls for noisify: each transform has its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.sigmoid(self.b(h))
        return self.head(torch.tanh(self.c(h)))


class LSTMOnlyHead(nn.Module):
    """An LSTM language model whose only Linear is its output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 50)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(tokens))[0])


STEPS = {
    "noisify": lambda m: surgeon.noisify(m),
    "convert": lambda m: surgeon.convert(m, "acdc", depth=2, seed=0),
    "mollify": lambda m: surgeon.mollify(m, kinds=("relu",)),
}


def _assert_reloads(model: nn.Module, fresh: nn.Module, inputs: torch.Tensor, path) -> nn.Module:
    surgeon.save(model, path)
    again = surgeon.load(path, fresh).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), again(inputs))
    assert [r.to_dict() for r in surgeon.records(again)] == [r.to_dict() for r in surgeon.records(model)]
    return again


def test_gpt2_projections_are_converted() -> None:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surgeon.TraceFallbackWarning)
        out = surgeon.convert(transformers.GPT2LMHeadModel(config), "acdc", depth=2)
    record = surgeon.records(out)[-1]
    assert record.selected == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                               "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert [s.name for s in record.skipped] == ["lm_head"]      # tied to the embedding: kept


def test_a_step_that_changed_nothing_replays_as_nothing(tmp_path) -> None:
    torch.manual_seed(0)
    with pytest.warns(surgeon.SelectionWarning, match="nothing was replaced"):
        out = surgeon.convert(LSTMOnlyHead(), "fastfood")
    assert surgeon.records(out)[-1].selected == []
    again = _assert_reloads(out, LSTMOnlyHead(), torch.randint(0, 50, (2, 7)), tmp_path / "noop.safetensors")
    # A later real step still replays on top of the empty one.
    both = surgeon.noisify(again)
    _assert_reloads(both, LSTMOnlyHead(), torch.randint(0, 50, (2, 7)), tmp_path / "noop-then-noisy.safetensors")
    assert [r.transform for r in surgeon.records(both)] == ["convert", "noisify"]


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids="-".join)
def test_chained_surgery_keeps_every_step_and_reloads_after_each(order: tuple[str, ...], tmp_path) -> None:
    torch.manual_seed(0)
    model: nn.Module = Net()
    x = torch.randn(3, 64)
    for done, name in enumerate(order, start=1):
        model = STEPS[name](model)
        assert [r.transform for r in surgeon.records(model)] == list(order[:done])
        assert surgeon.records(model)[-1].changes, f"{name} changed nothing after {order[:done - 1]}"
        _assert_reloads(model, Net(), x, tmp_path / f"step{done}.safetensors")
        model.train()


def test_copies_and_compile_wrappers_keep_the_records(tmp_path) -> None:
    torch.manual_seed(0)
    graph_module = surgeon.noisify(Net())                 # calls rewritten: an fx.GraphModule
    assert isinstance(graph_module, torch.fx.GraphModule)
    copied = copy.deepcopy(graph_module)
    assert [r.to_dict() for r in surgeon.records(copied)] == [r.to_dict() for r in surgeon.records(graph_module)]
    assert [r.transform for r in surgeon.records(copy.deepcopy(copied))] == ["noisify"]
    # A pickled GraphModule is re-traced on load with the tracer class it remembers (surgeon's own).
    buffer = io.BytesIO()
    torch.save(graph_module, buffer)
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False)
    assert [r.transform for r in surgeon.records(unpickled)] == ["noisify"]
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(unpickled.eval()(x), graph_module.eval()(x))
    graph_module.train()

    compiled = torch.compile(surgeon.convert(graph_module, "fastfood", seed=1), backend="eager")
    assert [r.transform for r in surgeon.records(compiled)] == ["noisify", "convert"]
    path = tmp_path / "compiled.safetensors"
    surgeon.save(compiled, path)                          # keys of the model, not of the wrapper
    _, metadata = read_checkpoint(path)
    assert [step["transform"] for step in json.loads(metadata["surgeon.recipe"])] == ["noisify", "convert"]
    again = surgeon.load(path, Net()).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(compiled.eval()(x), again(x))
    # a further surgery on the wrapper acts on the model it runs
    assert [r.transform for r in surgeon.records(surgeon.mollify(compiled, kinds=("relu",)))] == [
        "noisify", "convert", "mollify"]


def test_cli_chains_on_saved_checkpoints(tmp_path) -> None:
    runner = CliRunner()

    def ok(*args: str) -> None:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.stderr

    lm, lm2 = str(tmp_path / "lm.safetensors"), str(tmp_path / "lm2.safetensors")
    ok("noisify", "example:lstm-lm", "-o", lm, "-q")                 # the chain issue 14 reported as failing
    ok("convert", lm, "--depth", "4", "-o", lm2, "-q")
    ok("report", lm2, "-q")
    mlp, mlp2, mlp3 = (str(tmp_path / f"mlp{i}.safetensors") for i in range(3))
    ok("convert", "example:mlp", "--depth", "2", "--include", r"net\.0", "-o", mlp, "-q")
    ok("mollify", mlp, "-o", mlp2, "-q")
    ok("convert", mlp2, "--linear", "fastfood", "--include", r"net\.2\.block\.0", "-o", mlp3, "-q")
    _, metadata = read_checkpoint(mlp3)
    assert [step["transform"] for step in json.loads(metadata["surgeon.recipe"])] == ["convert", "mollify", "convert"]
    ok("report", mlp3, "-q")
