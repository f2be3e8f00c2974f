"""Checkpoints written before typed configs (records with hand-built ``arguments``) still load bit-exactly.

The files in ``tests/fixtures/legacy`` were written by surgeon at commit 0c25839 (before typed configs) from the
models in :mod:`tests.legacy_models`, each perturbed away from its init and run in eval mode on
``legacy_models.inputs(name)``; ``NAME.expected.safetensors`` holds that input and the output the saved model
gave. The recipes cover a chained convert (ACDC then non-adaptive Fastfood, module-tree fallback), a fitted
``depth="auto"`` convert of an ``F.linear`` call (GraphModule), a noisified LSTM language model (noisy gates and
a rewritten ``torch.tanh`` call) and a mollified MLP with stochastic skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import surgeon
from tests import legacy_models

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
NAMES = ("mlp", "functional", "lstm_lm", "sigmoid_mlp")


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_loads_bit_exactly(name):
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    # A freshly allocated input, as when the fixture was made: BLAS results can depend on memory alignment, and a
    # tensor read from a file need not be aligned.
    x = legacy_models.inputs(name)
    assert torch.equal(expected["input"], x)
    model = surgeon.load(FIXTURES / f"{name}.safetensors", getattr(legacy_models, name)()).eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected["output"])
    assert surgeon.records(model), "the recipe is kept on the rebuilt model"


def test_legacy_checkpoint_round_trips_through_a_new_save(tmp_path):
    expected = load_file(str(FIXTURES / "sigmoid_mlp.expected.safetensors"))
    model = surgeon.load(FIXTURES / "sigmoid_mlp.safetensors", legacy_models.sigmoid_mlp()).eval()
    surgeon.save(model, tmp_path / "again.safetensors")
    again = surgeon.load(tmp_path / "again.safetensors", legacy_models.sigmoid_mlp()).eval()
    with torch.no_grad():
        assert torch.equal(again(legacy_models.inputs("sigmoid_mlp")), expected["output"])
