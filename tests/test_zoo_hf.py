"""Hugging Face-native folders: save_pretrained / from_pretrained of converted transformers models, offline."""

from __future__ import annotations

import json
import os

import pytest
import torch

import surgeon
from surgeon.io.hf import CONFIG_NAME, RECIPE_NAME, WEIGHTS_NAME

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=96, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_folder_round_trip_is_bit_exact(tmp_path) -> None:
    small = surgeon.convert(_gpt2(), "fastfood", seed=0, inplace=True)
    assert all(c.old.startswith("Conv1D") for c in surgeon.records(small)[-1].changes)
    folder = surgeon.save_pretrained(small, tmp_path / "gpt2-ff")
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, WEIGHTS_NAME, RECIPE_NAME])
    with open(os.path.join(folder, CONFIG_NAME)) as handle:
        config = json.load(handle)
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["n_embd"] == 64
    with open(os.path.join(folder, RECIPE_NAME)) as handle:
        assert [step["transform"] for step in json.load(handle)] == ["convert"]
    again = surgeon.from_pretrained(folder)
    assert type(again) is transformers.GPT2LMHeadModel and not again.training
    assert again.lm_head.weight is again.transformer.wte.weight      # the tie survives the file
    tokens = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        assert torch.equal(small(tokens).logits, again(tokens).logits)
    assert [r.to_dict() for r in surgeon.records(again)] == [r.to_dict() for r in surgeon.records(small)]


def test_bf16_model_comes_back_in_bf16(tmp_path) -> None:
    torch.manual_seed(1)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=128, vocab_size=64, max_position_embeddings=16)
    model = transformers.BertModel(config).eval()
    small = surgeon.convert(model, "acdc", depth=2, seed=0).to(torch.bfloat16)
    again = surgeon.from_pretrained(surgeon.save_pretrained(small, tmp_path / "bert"))
    assert next(again.parameters()).dtype == torch.bfloat16
    tokens = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(small(tokens).last_hidden_state, again(tokens).last_hidden_state)


def test_folders_that_would_run_foreign_code_are_refused(tmp_path) -> None:
    folder = surgeon.save_pretrained(_gpt2(), tmp_path / "plain")
    path = os.path.join(folder, CONFIG_NAME)
    with open(path) as handle:
        config = json.load(handle)
    config["architectures"] = ["os.system"]
    with open(path, "w") as handle:
        json.dump(config, handle)
    # the architecture named in the weights' metadata wins over config.json; both must be transformers classes
    assert type(surgeon.from_pretrained(folder)).__name__ == "GPT2LMHeadModel"
    config.update(model_type="my-remote-model", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with open(path, "w") as handle:
        json.dump(config, handle)
    with pytest.raises(surgeon.CheckpointError, match="config.json"):
        surgeon.from_pretrained(folder)
    with pytest.raises(surgeon.CheckpointError, match="not a surgeon Hugging Face folder"):
        surgeon.from_pretrained(tmp_path / "missing")
    with pytest.raises(surgeon.CheckpointError, match="transformers config"):
        surgeon.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "no-config")
