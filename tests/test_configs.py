"""Typed transform configs: validation once, one-line errors naming the field, strict JSON round trips, and the
config form of each front door equal to its keyword form."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import surgeon
from surgeon.configs import ACDCConfig, FastfoodConfig, MollifyConfig, NoisifyConfig
from surgeon.configs.legacy import config_from_arguments
from surgeon.errors import ConfigError
from surgeon.layers.acdc import MAX_DEPTH

CONFIGS = [
    ACDCConfig(),
    ACDCConfig(depth={"fc1": 3, "fc2": 5}, activation="tanh", permute=False, init_std=0.0, seed=-4, min_features=0),
    ACDCConfig(init="fit", depth="auto", max_error=0.25, fit_steps=5, fit_rows=7, skip_output=False),
    FastfoodConfig(adaptive=False, target_ratio=2.5),
    NoisifyConfig(mode="NANIL", targets=["sigmoid"], c=0.3, alpha=1.2, gates=None, shared=True),
    NoisifyConfig(gates="mollified", gate_kwargs={"p": 0.5}),
    MollifyConfig(c=20, kinds=("tanh", "relu"), recurrent=False, p=0.25, eval_noise="none", eval_mode="full"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_json_round_trip(config):
    data = json.loads(json.dumps(config.to_dict()))
    again = type(config).from_dict(data)
    assert again == config and again.to_dict() == data
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        type(config).from_dict({**data, "colour": "red"})


def test_normalisation_is_done_once_in_the_constructor():
    assert NoisifyConfig(mode="NAN", targets="tanh").mode == "nan"
    assert NoisifyConfig(targets=["tanh", "tanh"]).targets == ("tanh",)
    assert ACDCConfig(init="fit").activation == "none"      # a linear cascade imitates a linear map
    assert ACDCConfig().activation == "relu"
    assert ACDCConfig(activation=None).activation == "none"
    assert isinstance(MollifyConfig(c=3).c, float)
    with pytest.raises(AttributeError):
        ACDCConfig().depth = 3    # frozen


@pytest.mark.parametrize("cls, options, field, allowed", [
    (ACDCConfig, {"depth": 0}, "depth", f"1 to {MAX_DEPTH}"),
    (ACDCConfig, {"depth": MAX_DEPTH + 1}, "depth", f"1 to {MAX_DEPTH}"),
    (ACDCConfig, {"depth": "twelve"}, "depth", "'auto'"),
    (ACDCConfig, {"depth": {"fc": 0}}, "depth", "mapping"),
    (ACDCConfig, {"depth": "auto"}, "depth", "init='fit'"),
    (ACDCConfig, {"depth": "auto", "init": "fit"}, "depth", "max_error"),
    (ACDCConfig, {"activation": "gelu"}, "activation", "'relu'"),
    (ACDCConfig, {"init_std": -1.0}, "init_std", ">= 0"),
    (ACDCConfig, {"init": "zeros"}, "init", "'random', 'fit'"),
    (ACDCConfig, {"max_error": 1.5}, "max_error", "< 1"),
    (ACDCConfig, {"min_features": -1}, "min_features", ">= 0"),
    (ACDCConfig, {"seed": 1.5}, "seed", "integer"),
    (FastfoodConfig, {"adaptive": "yes"}, "adaptive", "True or False"),
    (FastfoodConfig, {"target_ratio": float("nan")}, "target_ratio", "finite"),
    (NoisifyConfig, {"mode": "loud"}, "mode", "'nah'"),
    (NoisifyConfig, {"targets": ["relu"]}, "targets", "'sigmoid', 'tanh'"),
    (NoisifyConfig, {"targets": []}, "targets", "non-empty"),
    (NoisifyConfig, {"gates": "soft-ish"}, "gates", "'mollified'"),
    (NoisifyConfig, {"c": -1}, "c", ">= 0"),
    (NoisifyConfig, {"gate_kwargs": {"fn": len}}, "gate_kwargs", "JSON-able"),
    (MollifyConfig, {"p": 1.5}, "p", "<= 1"),
    (MollifyConfig, {"kinds": ["gelu"]}, "kinds", "'relu'"),
    (MollifyConfig, {"kinds": [], "recurrent": False}, "kinds", "non-empty"),
    (MollifyConfig, {"eval_noise": "some"}, "eval_noise", "'mean', 'none'"),
    (MollifyConfig, {"eval_mode": "half"}, "eval_mode", "'expectation', 'full'"),
])
def test_errors_name_the_field_and_what_it_allows(cls, options, field, allowed):
    with pytest.raises(ConfigError) as caught:
        cls(**options)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{cls.__name__}.{field} ") and allowed in message
    assert caught.value.field == field and caught.value.rule in message


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 96), nn.Sigmoid(), nn.Linear(96, 4))


@pytest.mark.parametrize("front, keywords, config", [
    (surgeon.convert, ("acdc",), ACDCConfig(depth=3, seed=2, activation="tanh")),
    (surgeon.convert, ("fastfood",), FastfoodConfig(adaptive=False, seed=1)),
    (surgeon.noisify, ("nanis",), NoisifyConfig(mode="nanis", c=0.2)),
    (surgeon.mollify, (), MollifyConfig(c=10.0, p=0.5)),
])
def test_keyword_form_equals_config_form(front, keywords, config):
    options = {k: v for k, v in config.to_dict().items() if k != "mode"}
    by_keywords = front(_mlp(), *keywords, **options)
    by_config = front(_mlp(), config)
    assert surgeon.records(by_keywords)[-1].to_dict() == surgeon.records(by_config)[-1].to_dict()
    assert surgeon.records(by_config)[-1].config == config.to_dict()
    state_a, state_b = by_keywords.state_dict(), by_config.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_front_doors_refuse_mixed_or_foreign_configs():
    with pytest.raises(ConfigError, match="not both"):
        surgeon.convert(_mlp(), ACDCConfig(), depth=3)
    with pytest.raises(ConfigError, match="use surgeon.noisify"):
        surgeon.convert(_mlp(), NoisifyConfig())
    with pytest.raises(ConfigError, match="linear must be one of 'acdc', 'fastfood'"):
        surgeon.convert(_mlp(), "dense")
    with pytest.raises(ConfigError, match="does not apply to FastfoodConfig|unknown option 'depth'"):
        surgeon.convert(_mlp(), "fastfood", depth=4)
    with pytest.raises(ConfigError, match="calibration is only used with init='fit'"):
        surgeon.convert(_mlp(), "acdc", calibration=[torch.randn(2, 64)])


def test_legacy_arguments_translate_to_configs():
    old = {"linear": "fastfood", "depth": 12, "min_features": 16, "skip_output": True, "seed": 9, "adaptive": False}
    assert config_from_arguments("convert", old) == FastfoodConfig(min_features=16, seed=9, adaptive=False)
    old = {"linear": "acdc", "depth": {"linear": 8}, "min_features": 16, "skip_output": True, "seed": 1,
           "activation": None}
    assert config_from_arguments("convert", old) == ACDCConfig(depth={"linear": 8}, min_features=16, seed=1,
                                                               activation="none")
