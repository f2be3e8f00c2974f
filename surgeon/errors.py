"""The errors and warnings surgeon raises, in one place so the CLI can map them to messages.

Every message is one line: what went wrong and, when there is one, what to do about it.
"""

from __future__ import annotations


class SurgeonError(Exception):
    """Base class of every error surgeon raises on purpose."""


class SelectionError(SurgeonError, ValueError):
    """``include`` / ``exclude`` / ``filter_fn`` chose nothing, or a selection argument is malformed."""


class ConfigError(SurgeonError, ValueError):
    """An argument of a transform is invalid (unknown layer option, impossible tolerance...).

    Raised by a config's constructor with ``field`` (the option at fault) and ``rule`` (what it must be, and the
    value it got), so a front end can name the option in its own terms (the CLI writes ``--depth must be ...``).
    """

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field, self.rule = field, rule


class SurgeryError(SurgeonError, RuntimeError):
    """A transform could not be applied to a model it had selected."""


class FitError(SurgeonError, RuntimeError):
    """``init="fit"`` could not fit a replacement (e.g. no calibration batch reached the layer)."""


class SurgeonWarning(UserWarning):
    """Base class of surgeon's warnings, so users can filter them all at once."""


class TraceFallbackWarning(SurgeonWarning):
    """torch.fx could not trace the model; the module-tree fallback was used."""


class SelectionWarning(SurgeonWarning):
    """A selection argument had no effect (an ``exclude`` entry excluded nothing, nothing was converted)."""


class KernelFallbackWarning(SurgeonWarning):
    """A Triton kernel could not launch on this GPU (too little shared memory); the torch path ran instead."""


class FitWarning(SurgeonWarning):
    """A fitted replacement missed the requested tolerance."""


__all__ = [
    "ConfigError",
    "FitError",
    "FitWarning",
    "KernelFallbackWarning",
    "SelectionError",
    "SelectionWarning",
    "SurgeonError",
    "SurgeonWarning",
    "SurgeryError",
    "TraceFallbackWarning",
]
