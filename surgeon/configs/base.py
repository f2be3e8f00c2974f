"""The base of every transform config: validation once, in the constructor, and a strict JSON round trip.

A config holds everything that decides *what* a transform builds: the structure (ACDC depth, noise mode...),
the default policy (``min_features``, ``skip_output``) and the fitting options; all of it JSON-able, because a
checkpoint's recipe stores ``config.to_dict()`` and ``load`` rebuilds the config with ``from_dict``. What is
chosen per call stays a call argument: the selection (``include`` / ``exclude`` / ``filter_fn``), calibration
data, ``inplace`` and ``quiet``.

A new config is a frozen, keyword-only dataclass deriving from :class:`TransformConfig` with the class
variables ``transform`` (the front door that takes it: ``"convert"``, ``"noisify"``, ``"mollify"``) and
``name`` (its keyword-form name, ``surgeon.convert(model, "acdc", ...)``), and a ``check`` method that
validates (and normalises, with :meth:`TransformConfig._set`) its own fields after calling ``super().check()``.
Defining the class registers it; :func:`surgeon.surgery.transform.register_transform` registers its handler.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NoReturn, TypeVar

from surgeon.errors import ConfigError

C = TypeVar("C", bound="TransformConfig")

#: Every config class by its class name (what a record's ``config_type`` holds).
CONFIG_TYPES: dict[str, type[TransformConfig]] = {}


def _show(allowed: Iterable[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, recursively: what ``json.loads(json.dumps(value))`` gives back."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformConfig:
    """Base class of the typed transform configs (frozen: a config never changes once checked)."""

    transform: ClassVar[str] = ""     # the front door taking this config: "convert", "noisify", "mollify"
    name: ClassVar[str] = ""          # its name in the keyword form, e.g. "acdc"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CONFIG_TYPES[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate and normalise the fields; subclasses extend it (calling ``super().check()`` first)."""

    # -- JSON round trip --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The config ``data`` describes (as :meth:`to_dict` wrote it); unknown keys are a ConfigError."""
        if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
            raise ConfigError(f"{cls.__name__}: expected a mapping of option names to values, got "
                              f"{type(data).__name__}")
        return cls.from_options(**data)

    @classmethod
    def from_options(cls: type[C], **options: Any) -> C:
        """The keyword form: ``ACDCConfig.from_options(depth=4)``, with unknown options named in the error."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}",
                              field=unknown[0], rule=f"does not apply to {cls.__name__}")
        return cls(**options)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def for_replay(self: C) -> C:
        """The config that rebuilds the recorded structure on a fresh model, whose weights come from a file."""
        return self

    # -- validation helpers (each raises one ConfigError naming the field and what it allows) -----------------
    def _fail(self, field: str, rule: str) -> NoReturn:
        raise ConfigError(f"{type(self).__name__}.{field} {rule}", field=field, rule=rule)

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)   # normalising a frozen dataclass while it is being checked

    def _one_of(self, field: str, allowed: Iterable[Any]) -> None:
        allowed = tuple(allowed)
        value = getattr(self, field)
        if not any(value == a and type(value) is type(a) for a in allowed):
            self._fail(field, f"must be one of {_show(allowed)}; got {value!r}")

    def _flag(self, field: str) -> None:
        if not isinstance(getattr(self, field), bool):
            self._fail(field, f"must be True or False; got {getattr(self, field)!r}")

    def _number(self, field: str, *, above: float | None = None, at_least: float | None = None,
                below: float | None = None, at_most: float | None = None, optional: bool = False) -> None:
        value = getattr(self, field)
        if value is None and optional:
            return
        bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
                  f"< {below:g}" if below is not None else "", f"<= {at_most:g}" if at_most is not None else ""]
        wanted = "a finite number " + " and ".join(b for b in bounds if b) + (" or None" if optional else "")
        ok = _is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) \
            and (below is None or value < below) and (at_most is None or value <= at_most)
        if not ok:
            self._fail(field, f"must be {wanted.strip()}; got {value!r}")
        self._set(field, float(value))

    def _integer(self, field: str, *, at_least: int | None = None, at_most: int | None = None,
                 optional: bool = False) -> None:
        value = getattr(self, field)
        if value is None and optional:
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and (at_least is None or value >= at_least) \
            and (at_most is None or value <= at_most)
        if not ok:
            span = (f" from {at_least} to {at_most}" if at_least is not None and at_most is not None
                    else f" >= {at_least}" if at_least is not None else "")
            self._fail(field, f"must be an integer{span}{' or None' if optional else ''}; got {value!r}")

    def _subset(self, field: str, allowed: Iterable[str], *, nonempty: bool = True) -> None:
        """A string or an iterable of strings among ``allowed``, stored as a tuple."""
        allowed = tuple(allowed)
        value = getattr(self, field)
        items = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else None
        if items is None or any(i not in allowed for i in items) or (nonempty and not items):
            self._fail(field, f"must be a {'non-empty ' if nonempty else ''}subset of {_show(allowed)}; "
                              f"got {value!r}")
        self._set(field, tuple(dict.fromkeys(items)))


def config_type(type_name: str) -> type[TransformConfig]:
    """The config class a record names (``"ACDCConfig"``)."""
    if type_name not in CONFIG_TYPES:
        raise ConfigError(f"unknown config type {type_name!r}; known: {', '.join(sorted(CONFIG_TYPES))}")
    return CONFIG_TYPES[type_name]


def config_names(transform: str) -> dict[str, type[TransformConfig]]:
    """The keyword-form names of the configs front door ``transform`` takes: ``{"acdc": ACDCConfig, ...}``."""
    return {cls.name: cls for cls in CONFIG_TYPES.values() if cls.transform == transform and cls.name}


def named_config(transform: str, name: str, label: str) -> type[TransformConfig]:
    """The config class of front door ``transform`` called ``name`` in the keyword form (``"acdc"``)."""
    names = config_names(transform)
    if name not in names:
        rule = f"must be one of {_show(names)}; got {name!r}"
        raise ConfigError(f"{transform}: {label} {rule}", field=label, rule=rule)
    return names[name]
