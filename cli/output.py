"""The one place the CLI prints: rich tables and messages to stdout, errors to stderr, JSON when asked.

Messages carry user text (file names, regexes, module names) which must be shown as typed: both consoles
interpret neither rich markup (``[/x]``) nor emoji codes (``:b:``); the styled prefixes are ``Text`` objects.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text


def one_line(message: str) -> str:
    """``message`` with control characters (newlines in a file name, terminal escapes) shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


class Output:
    """Rendering for one command invocation; ``quiet`` silences everything but data and errors."""

    def __init__(self, quiet: bool = False, as_json: bool = False) -> None:
        self.quiet, self.as_json = quiet, as_json
        self.console = Console(highlight=False, markup=False, emoji=False)
        if not self.console.is_terminal:
            # Piped or captured output: wide enough that tables stay readable instead of folding at 80 columns.
            self.console.width = 160
        self.errors = Console(stderr=True, highlight=False, markup=False, emoji=False)

    def info(self, message: str) -> None:
        if not self.quiet and not self.as_json:
            self.console.print(Text(message), soft_wrap=True)

    def show(self, renderable: Any) -> None:
        """A table or other rich renderable — the command's human-readable result."""
        if not self.quiet and not self.as_json:
            self.console.print(renderable)

    def data(self, payload: Any) -> None:
        """The command's machine-readable result (always printed with ``--json``)."""
        if self.as_json:
            sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
            sys.stdout.flush()  # the result is out (or the failure to print it is reported) before the command ends

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.errors.print(Text.assemble(("warning:", "yellow"), " ", one_line(message)), soft_wrap=True)

    def error(self, message: str) -> None:
        self.errors.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)

    def progress_enabled(self) -> bool:
        return not self.quiet and not self.as_json and self.errors.is_terminal
