"""Errors mapped to one-line messages and exit codes, in one place.

Exit codes: 2 for usage errors (bad option values, a malformed ``--arch`` or ``--input-shape``), 1 for failures
(unreadable model, surgery that cannot be applied, a full disk...), 128 + the signal number when interrupted
(130 for Ctrl-C / SIGINT, 143 for SIGTERM). Tracebacks only with ``--debug`` or ``SURGEON_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import traceback
from collections.abc import Callable
from typing import TypeVar

import typer

from surgeon.cli.output import Output
from surgeon.errors import SurgeonError

T = TypeVar("T")

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 128 + signal.SIGINT
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class UsageError(SurgeonError, ValueError):
    """A command-line argument is malformed (exit code 2)."""


class InputError(SurgeonError, ValueError):
    """A model or data file cannot be used (exit code 1)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so ``except Exception`` cannot swallow
    it, but not a KeyboardInterrupt, so click does not turn it into a silent exit: the handlers here report it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted`, so ``finally`` blocks remove temporary files."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _raise_interrupted)


def _ignore_further_signals() -> None:
    """A second Ctrl-C while the first one is reported must not interrupt the report itself."""
    with contextlib.suppress(ValueError):  # signal.signal works in the main thread only
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def interrupted_message(exc: BaseException) -> tuple[str, int]:
    """What an interrupt left behind, truthfully: the outputs already placed, or none."""
    from surgeon.cli.files import written_outputs

    signum = getattr(exc, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    written = written_outputs()
    if written:
        return f"interrupted ({name}) after {', '.join(written)} was written (it is complete)", 128 + signum
    return f"interrupted ({name}); no output was written", 128 + signum


def debug_enabled() -> bool:
    return os.environ.get("SURGEON_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


_OS_ERRORS = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory",
              PermissionError: "permission denied", NotADirectoryError: "not a directory",
              FileExistsError: "already exists; pass --force to overwrite it"}


def message_for(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception raised while running a command."""
    if isinstance(exc, UsageError):
        return str(exc).strip(), EXIT_USAGE
    if isinstance(exc, SurgeonError):  # our own messages are one line, but may quote a path holding a newline
        return str(exc).strip() or type(exc).__name__, EXIT_FAILURE
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on device: {exc.filename or 'while writing'}", EXIT_FAILURE
    if type(exc) in _OS_ERRORS:
        name = getattr(exc, "filename", None)
        return (f"{name}: {_OS_ERRORS[type(exc)]}" if name else _first_line(exc)), EXIT_FAILURE
    if isinstance(exc, OSError):
        return f"{getattr(exc, 'filename', '') or ''} {exc.strerror or _first_line(exc)}".strip(), EXIT_FAILURE
    if isinstance(exc, (ValueError, TypeError, RuntimeError)):
        return f"{_first_line(exc)} (run with --debug for details)", EXIT_FAILURE
    return f"{type(exc).__name__}: {_first_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE


def run_guarded(out: Output, action: Callable[[], T]) -> T:
    """Run a command body; turn any failure into a one-line message and a clean exit code."""
    from surgeon.cli.files import forget_outputs

    forget_outputs()
    try:
        return action()
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except (KeyboardInterrupt, Interrupted) as exc:
        _ignore_further_signals()
        message, code = interrupted_message(exc)
        out.error(message)
        raise typer.Exit(code) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if debug_enabled():
            traceback.print_exc()
        message, code = message_for(exc)
        out.error(message)
        raise typer.Exit(code) from None
