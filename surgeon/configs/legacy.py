"""Records written before typed configs, translated once, here, into the config form.

Those records held the keyword arguments of the transform (``{"linear": "acdc", "depth": 4, "seed": 3,
"activation": "tanh", ...}``) under ``arguments``; today's hold ``config_type`` and ``config`` (the config's
``to_dict()``). Fastfood steps of that era also stored the ``depth`` that does not apply to them.
"""

from __future__ import annotations

from typing import Any

from surgeon.configs.base import TransformConfig, named_config
from surgeon.configs.linear import FastfoodConfig
from surgeon.errors import ConfigError

# Call arguments that never belonged to the structure (dropped, as the old replay did).
_CALL_ARGUMENTS = ("include", "exclude", "filter_fn", "calibration", "inplace", "quiet")


def config_from_arguments(transform: str, arguments: dict[str, Any]) -> TransformConfig:
    """The config an old record's ``transform`` and ``arguments`` describe."""
    options = {k: v for k, v in arguments.items() if k not in _CALL_ARGUMENTS}
    if transform == "convert":
        cls = named_config("convert", options.pop("linear", "acdc"), "linear")
        if cls is FastfoodConfig:
            options.pop("depth", None)
    elif transform in ("noisify", "mollify"):
        cls = named_config(transform, transform, "transform")
    else:
        raise ConfigError(f"recipe step {transform!r} is not a known transform")
    return cls.from_dict(options)


def translate_record(data: dict[str, Any]) -> dict[str, Any]:
    """A record dict in today's form (``config_type`` + ``config``), whichever form ``data`` is in."""
    if "arguments" not in data:
        return data
    data = dict(data)
    config = config_from_arguments(str(data.get("transform", "")), data.pop("arguments") or {})
    data["config_type"], data["config"] = type(config).__name__, config.to_dict()
    return data
