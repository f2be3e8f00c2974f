"""Errors mapped to one-line messages and exit codes, in one place.

Exit codes: 2 for usage errors (bad option values, a malformed ``--arch``), 1 for failures (unreadable
model, surgery that cannot be applied...), 130 when interrupted. Tracebacks only with ``--debug`` or
``SURGEON_DEBUG=1``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import TypeVar

import typer

from surgeon.cli.output import Output
from surgeon.errors import SurgeonError

T = TypeVar("T")

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(SurgeonError, ValueError):
    """A command-line argument is malformed (exit code 2)."""


class InputError(SurgeonError, ValueError):
    """A model or data file cannot be used (exit code 1)."""


def debug_enabled() -> bool:
    return os.environ.get("SURGEON_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def message_for(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception raised while running a command."""
    if isinstance(exc, UsageError):
        return _first_line(exc), EXIT_USAGE
    if isinstance(exc, SurgeonError):
        return _first_line(exc), EXIT_FAILURE
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError)):
        name = getattr(exc, "filename", None)
        what = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory",
                PermissionError: "permission denied", NotADirectoryError: "not a directory"}[type(exc)]
        return (f"{name}: {what}" if name else _first_line(exc)), EXIT_FAILURE
    if isinstance(exc, OSError):
        return f"{getattr(exc, 'filename', '') or ''} {exc.strerror or _first_line(exc)}".strip(), EXIT_FAILURE
    if isinstance(exc, (ValueError, TypeError, RuntimeError)):
        return f"{_first_line(exc)} (run with --debug for details)", EXIT_FAILURE
    return f"{type(exc).__name__}: {_first_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE


def run_guarded(out: Output, action: Callable[[], T]) -> T:
    """Run a command body; turn any failure into a one-line message and a clean exit code."""
    try:
        return action()
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        out.error("interrupted; no output was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if debug_enabled():
            traceback.print_exc()
        message, code = message_for(exc)
        out.error(message)
        raise typer.Exit(code) from None
