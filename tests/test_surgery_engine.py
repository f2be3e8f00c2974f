"""The generic surgery engine, exercised with a rule that is not about Linear layers.

This file is the contract for transforms built on ``apply_surgery`` (noisify, mollify): a rule that swaps
``nn.ReLU`` modules, ``torch.relu`` / ``F.relu`` calls and ``.relu()`` methods for another module.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from surgeon.errors import SelectionError, SelectionWarning, SurgeonError, TraceFallbackWarning
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.record import SurgeryRecord, records
from surgeon.surgery.rules import Rule, Site


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
    out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={"slope": 0.5})
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
    out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={})
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
        out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={})
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
        apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={}, include=r"nothing\..*")
    text = str(info.value)
    assert "\n" not in text and "act" in text and isinstance(info.value, SurgeonError)
    with pytest.raises(SelectionError):
        apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={}, include="[unclosed")
    with pytest.warns(SelectionWarning, match="excluded nothing"):
        out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={}, exclude=["no_such"])
    assert len(records(out)[-1].changes) == 4
    out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={}, include=["act"])
    record = records(out)[-1]
    assert record.selected == ["act"]
    assert all("not matched by include" in s.reason for s in record.skipped)
    out = apply_surgery(model, [ReluRule()], transform_name="leaky", arguments={},
                        filter_fn=lambda module, name: isinstance(module, nn.ReLU))
    assert records(out)[-1].selected == ["act"]
    with pytest.raises(SelectionError, match="nothing to replace"):
        apply_surgery(nn.Sequential(nn.Linear(2, 2)), [ReluRule()], transform_name="leaky", arguments={})


def test_record_roundtrip_and_replay_on_fresh_model() -> None:
    out = apply_surgery(AllForms(), [ReluRule()], transform_name="leaky", arguments={}, exclude=["act"])
    record = SurgeryRecord.from_dict(json.loads(json.dumps(records(out)[-1].to_dict())))
    replayed = apply_surgery(AllForms(), [ReluRule()], transform_name="leaky", arguments=record.arguments,
                             include=record.selected)
    assert records(replayed)[-1].selected == record.selected
    assert dict(replayed.named_modules()).keys() == dict(out.named_modules()).keys()
