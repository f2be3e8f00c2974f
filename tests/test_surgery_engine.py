"""The generic surgery engine, exercised with a rule that is not about Linear layers.

This file is the contract for transforms built on ``apply_surgery`` (noisify, mollify): a rule that swaps
``nn.ReLU`` modules, ``torch.relu`` / ``F.relu`` calls and ``.relu()`` methods for another module.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from surgeon.configs import TransformConfig
from surgeon.errors import (
    ConfigError,
    SelectionError,
    SelectionWarning,
    SurgeonError,
    SurgeryError,
    TraceFallbackWarning,
)
from surgeon.io.checkpoint import load, save
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.record import SurgeryRecord, records
from surgeon.surgery.rules import Rule, Site
from surgeon.surgery.transform import Call, register_transform, run_transform


class Leaky(nn.Module):
    """The replacement: leaky ReLU with slope 0.5, so a swapped site is visible in the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, 0.5 * x)


class ReluRule(Rule):
    name = "relu"
    module_types = (nn.ReLU,)
    functions = (torch.relu, F.relu)    # fx keeps F.relu as its own call_function target
    methods = ("relu",)

    def call_args(self, site: Site, node: fx.Node) -> tuple[tuple, dict]:
        return (node.args[0],), {}       # drop F.relu's inplace=False

    def build(self, site: Site) -> nn.Module:
        return Leaky()


class AllForms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.unused = nn.Parameter(torch.ones(2))   # never used in forward: must survive the GraphModule
        self.register_buffer("stat", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.fc(x))
        b = torch.relu(x - 1)
        c = F.relu(x + 1)
        d = (x * 2).relu()
        return a + b + c + d

    def helper(self) -> str:
        return "kept"


def leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, 0.5 * x)


def test_rule_replaces_modules_functions_and_methods() -> None:
    torch.manual_seed(0)
    model = AllForms()
    x = torch.randn(5, 4)
    out = apply_surgery(model, [ReluRule()], transform_name="leaky")
    assert isinstance(out, fx.GraphModule)          # calls were rewritten, so a GraphModule is needed
    expected = leaky(model.fc(x)) + leaky(x - 1) + leaky(x + 1) + leaky(x * 2)
    torch.testing.assert_close(out(x), expected)
    # The original is untouched (inplace=False) and still computes plain ReLUs.
    torch.testing.assert_close(model(x), torch.relu(model.fc(x)) + torch.relu(x - 1) + torch.relu(x + 1)
                               + torch.relu(2 * x))
    record = records(out)[-1]
    assert sorted(c.source for c in record.changes) == ["function", "function", "method", "module"]
    assert record.selected == [c.name for c in record.changes]
    assert "act" in record.selected
    assert set(out.state_dict()) == set(model.state_dict())   # parameter-free replacements add no keys
    assert json.loads(json.dumps(record.to_dict()))["transform"] == "leaky"


def test_module_only_rule_keeps_class_and_methods() -> None:
    class OnlyModules(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

        def helper(self) -> int:
            return 7

    model = OnlyModules().eval()
    out = apply_surgery(model, [ReluRule()], transform_name="leaky")
    assert type(out) is OnlyModules and out.helper() == 7
    assert isinstance(out.body[1], Leaky) and isinstance(out.body[3], Leaky)
    assert isinstance(model.body[1], nn.ReLU)          # copy, not in place
    assert not out.training and not out.body[1].training
    x = torch.randn(2, 3)
    torch.testing.assert_close(out(x), leaky(out.body[2](leaky(out.body[0](x)))))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:                       # data-dependent control flow: fx cannot trace this
            return self.act(x)
        return torch.relu(-x)


def test_fallback_warns_once_and_names_unseen_calls() -> None:
    model = Untraceable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = apply_surgery(model, [ReluRule()], transform_name="leaky")
    fallback = [w for w in caught if issubclass(w.category, TraceFallbackWarning)]
    assert len(fallback) == 1
    message = str(fallback[0].message)
    assert "torch.relu" in message and "Untraceable.forward" in message and "\n" not in message
    assert type(out) is Untraceable and isinstance(out.act, Leaky)
    record = records(out)[-1]
    assert record.traced is False and record.warnings and record.selected == ["act"]
    x = torch.tensor([[-1.0, 3.0]])
    torch.testing.assert_close(out(x), torch.tensor([[-0.5, 3.0]]))


def test_selection_errors_and_warnings() -> None:
    model = AllForms()
    with pytest.raises(SelectionError) as info:
        apply_surgery(model, [ReluRule()], transform_name="leaky", include=r"nothing\..*")
    text = str(info.value)
    assert "\n" not in text and "act" in text and isinstance(info.value, SurgeonError)
    with pytest.raises(SelectionError):
        apply_surgery(model, [ReluRule()], transform_name="leaky", include="[unclosed")
    with pytest.warns(SelectionWarning, match="excluded nothing"):
        out = apply_surgery(model, [ReluRule()], transform_name="leaky", exclude=["no_such"])
    assert len(records(out)[-1].changes) == 4
    out = apply_surgery(model, [ReluRule()], transform_name="leaky", include=["act"])
    record = records(out)[-1]
    assert record.selected == ["act"]
    assert all("not matched by include" in s.reason for s in record.skipped)
    out = apply_surgery(model, [ReluRule()], transform_name="leaky",
                        filter_fn=lambda module, name: isinstance(module, nn.ReLU))
    assert records(out)[-1].selected == ["act"]
    with pytest.raises(SelectionError, match="nothing to replace"):
        apply_surgery(nn.Sequential(nn.Linear(2, 2)), [ReluRule()], transform_name="leaky")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeakyConfig(TransformConfig):
    """A config of the test's own transform: what a new structure adds to become replayable."""

    transform: ClassVar[str] = "leaky"
    slope: float = 0.5

    def check(self) -> None:
        super().check()
        self._number("slope", above=0, below=1)


class SlopeLeaky(nn.Module):
    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.slope * x)


class SlopeRule(ReluRule):
    def __init__(self, slope: float) -> None:
        self.slope = slope

    def build(self, site: Site) -> nn.Module:
        return SlopeLeaky(self.slope)


@register_transform(LeakyConfig)
def _leaky(model: nn.Module, config: LeakyConfig, call: Call) -> nn.Module:
    return apply_surgery(model, [SlopeRule(config.slope)], config=config, **call.selection(), inplace=call.inplace)


def test_record_roundtrip_and_replay_on_fresh_model(tmp_path) -> None:
    out = run_transform(AllForms(), LeakyConfig(slope=0.25), Call(exclude=["act"]))
    record = SurgeryRecord.from_dict(json.loads(json.dumps(records(out)[-1].to_dict())))
    assert record.config_type == "LeakyConfig" and record.rebuild_config() == LeakyConfig(slope=0.25)
    replayed = run_transform(AllForms(), record.rebuild_config(), Call(include=record.selected))
    assert records(replayed)[-1].selected == record.selected
    assert dict(replayed.named_modules()).keys() == dict(out.named_modules()).keys()
    # The same through a checkpoint: load() finds the handler by the recorded config type.
    save(out, tmp_path / "leaky.safetensors")
    model = AllForms()
    loaded = load(tmp_path / "leaky.safetensors", model)
    x = torch.randn(3, 4)
    expected = (torch.relu(model.fc(x)) + torch.where(x - 1 > 0, x - 1, 0.25 * (x - 1))
                + torch.where(x + 1 > 0, x + 1, 0.25 * (x + 1)) + torch.where(2 * x > 0, 2 * x, 0.5 * x))
    torch.testing.assert_close(loaded(x), expected)
    with pytest.raises(ConfigError, match=r"LeakyConfig\.slope must be .*< 1.*got 2") as caught:
        LeakyConfig(slope=2)
    assert caught.value.field == "slope"


class FailingRule(ReluRule):
    """Counts its life-cycle calls; ``build`` fails on the second site."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.prepared, self.finished, self.built = fail, 0, 0, 0

    def prepare(self, context) -> None:
        self.prepared += 1

    def build(self, site: Site) -> nn.Module:
        self.built += 1
        if self.fail and self.built == 2:
            raise RuntimeError("boom")
        return Leaky()

    def finish(self) -> list[Warning]:
        self.finished += 1
        return [SelectionWarning("finished with a note")]


def test_engine_drives_prepare_build_finish_even_on_error() -> None:
    rule = FailingRule(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        apply_surgery(AllForms(), [rule], transform_name="leaky")
    assert (rule.prepared, rule.built, rule.finished) == (1, 2, 1)
    rule = FailingRule(fail=False)
    with pytest.warns(SelectionWarning, match="finished with a note"):
        out = apply_surgery(AllForms(), [rule], transform_name="leaky")
    assert (rule.prepared, rule.built, rule.finished) == (1, 4, 1)
    assert "finished with a note" in records(out)[-1].warnings


def test_records_must_be_json_able() -> None:
    class OpaqueRule(ReluRule):
        def change_config(self, module: nn.Module) -> dict:
            return {"fn": leaky}

    with pytest.raises(SurgeryError, match="not JSON-able.*change 'act'"):
        apply_surgery(AllForms(), [OpaqueRule()], transform_name="leaky", include=["act"])
