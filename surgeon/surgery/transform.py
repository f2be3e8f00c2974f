"""One dispatch for every transform: the config's type picks its handler (a torchao-style registry).

``surgeon.convert`` / ``noisify`` / ``mollify`` are front doors that turn their keyword form into a config and
call :func:`run_transform`; ``surgeon.load`` replays a recipe through it too. A new structure is one config
class (see :mod:`surgeon.configs.base`) and one handler registered for it::

    @register_transform(MyConfig)
    def _my_transform(model: nn.Module, config: MyConfig, call: Call) -> nn.Module:
        return apply_surgery(model, [MyRule(config)], config=config, **call.selection(), inplace=call.inplace)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from surgeon.configs.base import TransformConfig, named_config
from surgeon.errors import ConfigError
from surgeon.surgery.select import FilterFn, Pattern

H = TypeVar("H", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class Call:
    """What a call chooses beside its config: selection, calibration data, copying and progress output."""

    include: Pattern = None
    exclude: Pattern = None
    filter_fn: FilterFn | None = None
    calibration: Iterable[Any] | None = None
    inplace: bool = False
    quiet: bool = False

    def selection(self) -> dict[str, Any]:
        """``include`` / ``exclude`` / ``filter_fn`` as keyword arguments of :func:`apply_surgery`."""
        return {"include": self.include, "exclude": self.exclude, "filter_fn": self.filter_fn}


Handler = Callable[[nn.Module, Any, Call], nn.Module]
HANDLERS: dict[type[TransformConfig], Handler] = {}


def register_transform(config_type: type[TransformConfig]) -> Callable[[H], H]:
    """Decorator: ``handler(model, config, call) -> model`` performs the surgery ``config_type`` describes."""

    def decorate(handler: H) -> H:
        HANDLERS[config_type] = handler
        return handler

    return decorate


def make_config(transform: str, spec: TransformConfig | str, options: dict[str, Any],
                label: str) -> TransformConfig:
    """The config of a front-door call: ``spec`` itself, or the config named ``spec`` built from ``options``."""
    if isinstance(spec, TransformConfig):
        if options:
            raise ConfigError(f"{transform}: pass options inside the config or as keywords, not both "
                              f"(got {type(spec).__name__} and {', '.join(sorted(options))})")
        config = spec
    elif isinstance(spec, str):
        config = named_config(transform, spec, label).from_options(**options)
    else:
        raise ConfigError(f"{transform}: {label} must be a config or a name, got {type(spec).__name__}")
    if config.transform != transform:
        raise ConfigError(f"{transform} does not take {type(config).__name__}; use surgeon.{config.transform}")
    return config


def run_transform(model: nn.Module, config: TransformConfig, call: Call | None = None) -> nn.Module:
    """Apply the surgery ``config`` describes to ``model`` with the handler registered for its type."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"no transform is registered for {type(config).__name__}")
    return handler(model, config, call or Call())
