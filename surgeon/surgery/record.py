"""What a surgery changed: the record every transform returns, and the recipe that replays it.

A model that went through ``surgeon.convert`` / ``noisify`` / ``mollify`` carries, as the plain Python attribute
``surgeon_records``, one :class:`SurgeryRecord` per transform applied, oldest first. The record is JSON-able: a
checkpoint stores it as its recipe, and replaying the recipe on a freshly built original model (calling the same
transform with the recorded config and ``include`` narrowed to exactly ``selected``) rebuilds the same structure, so
the saved weights load into it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from surgeon.configs.base import TransformConfig, config_type
from surgeon.configs.legacy import translate_record
from surgeon.errors import SurgeryError

RECORDS_ATTRIBUTE = "surgeon_records"


@dataclass
class Change:
    """One replaced module or call site."""

    name: str                 # qualified name of the new module in the returned model
    source: str               # what was replaced: "module", "function" or "method"
    old: str                  # e.g. "Linear(4096, 4096)" or "torch.sigmoid"
    new: str                  # class name of the replacement, e.g. "ACDCLinear"
    config: dict[str, Any]    # constructor kwargs of the replacement (JSON-able)
    params_before: int = 0
    params_after: int = 0
    fit_error: float | None = None   # held-out relative output error ‖Wx − Φ(x)‖/‖Wx‖ for init="fit"
    note: str = ""


@dataclass
class Skip:
    """A candidate left untouched, and why."""

    name: str
    reason: str


@dataclass
class SurgeryRecord:
    """Everything one transform did to one model."""

    transform: str                     # "convert", "noisify", "mollify"
    config_type: str = ""              # class name of the config, e.g. "ACDCConfig" ("" for a custom surgery)
    config: dict[str, Any] = field(default_factory=dict)   # config.to_dict() of what replays the surgery
    selected: list[str] = field(default_factory=list)   # exact names chosen for surgery
    changes: list[Change] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    traced: bool = True                # False when the module-tree fallback was used
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurgeryRecord:
        """The record ``data`` describes (also in the pre-config form with ``arguments``, translated)."""
        data = translate_record(dict(data))
        data["changes"] = [Change(**c) for c in data.get("changes", [])]
        data["skipped"] = [Skip(**s) for s in data.get("skipped", [])]
        return cls(**data)

    def rebuild_config(self) -> TransformConfig:
        """The config this record stores (checked again)."""
        return config_type(self.config_type).from_dict(self.config)

    def check_json(self) -> None:
        """Raise SurgeryError unless the record is JSON-able (a checkpoint's recipe must be)."""
        try:
            json.dumps(self.to_dict())
        except (TypeError, ValueError) as exc:
            bad = next((c.name for c in self.changes if not _json_able(c.config)), None)
            where = f" (the config of change {bad!r})" if bad else ""
            raise SurgeryError(f"{self.transform}: the record is not JSON-able{where}, so it could not be replayed "
                               f"from a checkpoint: {exc}") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) runs, or ``model`` itself."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    wrapper = getattr(dynamo, "OptimizedModule", None) if dynamo is not None else None
    while wrapper is not None and isinstance(model, wrapper):
        model = model._orig_mod
    return model


def records(model: nn.Module) -> list[SurgeryRecord]:
    """The surgeries applied to ``model``, oldest first (empty for an untouched model)."""
    return list(getattr(unwrap(model), RECORDS_ATTRIBUTE, []))


def set_records(model: nn.Module, history: list[SurgeryRecord]) -> None:
    """Make ``history`` the records of ``model`` (of the module a torch.compile wrapper runs).

    A GraphModule's ``copy.deepcopy`` rebuilds it from its graph and keeps no plain attribute, only its ``meta``
    and the attributes listed there under fx's user-preserved key; the records are listed there too, so
    chained surgery (which copies its input) keeps every step.
    """
    model = unwrap(model)
    object.__setattr__(model, RECORDS_ATTRIBUTE, list(history))
    if isinstance(model, fx.GraphModule):
        key = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
        model.meta.setdefault(key, {})[RECORDS_ATTRIBUTE] = list(history)


def append_record(model: nn.Module, record: SurgeryRecord) -> None:
    """Attach ``record`` to ``model`` (instance-level; nothing global is touched)."""
    set_records(model, [*records(model), record])


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
