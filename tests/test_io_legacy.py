"""Checkpoints written before typed configs (records with hand-built ``arguments``) still load exactly.

"Exactly" is about the checkpoint: every parameter and buffer of the rebuilt model is bit-identical to the tensor
in the file. The outputs are compared within fp32 rounding (``rtol=1e-5, atol=1e-6``), not bit for bit: the
compute engine has changed since the fixtures were written (small DCTs now run as one GEMM against the dense
matrix instead of through pocketfft, ``surgeon.ops.dct.matmul_wins``), which rounds a few ulps differently.
Save/load under one engine stays bit-exact (``test_legacy_checkpoint_round_trips_through_a_new_save`` and
``tests/test_io_checkpoint.py``).

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


def _assert_state_is_the_file(model: torch.nn.Module, path: Path) -> None:
    stored = load_file(str(path))
    state = model.state_dict()
    assert set(state) == set(stored), "the rebuilt model has exactly the file's tensors"
    for key, tensor in stored.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_loads_exactly(name):
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    x = legacy_models.inputs(name)
    assert torch.equal(expected["input"], x)
    model = surgeon.load(FIXTURES / f"{name}.safetensors", getattr(legacy_models, name)()).eval()
    _assert_state_is_the_file(model, FIXTURES / f"{name}.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected["output"], rtol=1e-5, atol=1e-6)
    assert surgeon.records(model), "the recipe is kept on the rebuilt model"


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_round_trips_through_a_new_save(name, tmp_path):
    """Saved again and reloaded, the model has the same tensors and gives bit-identical outputs (one engine)."""
    # A freshly allocated input each time: BLAS results can depend on memory alignment.
    model = surgeon.load(FIXTURES / f"{name}.safetensors", getattr(legacy_models, name)()).eval()
    surgeon.save(model, tmp_path / "again.safetensors")
    again = surgeon.load(tmp_path / "again.safetensors", getattr(legacy_models, name)()).eval()
    _assert_state_is_the_file(again, FIXTURES / f"{name}.safetensors")
    with torch.no_grad():
        assert torch.equal(again(legacy_models.inputs(name)), model(legacy_models.inputs(name)))
