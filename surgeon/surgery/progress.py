"""A progress bar that only shows up for work that takes more than a second."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class LazyProgress:
    """Transient ``rich`` progress over ``total`` units, shown once ``delay`` seconds have passed.

    Disabled when ``quiet`` or when stderr is not a terminal (logs and CI stay clean).
    """

    def __init__(self, total: int, description: str, *, quiet: bool = False, delay: float = 1.0) -> None:
        self.total, self.description, self.delay = total, description, delay
        self.enabled = not quiet and sys.stderr.isatty()
        self._start = time.monotonic()
        self._progress: Progress | None = None
        self._task = None
        self._done = 0.0

    def __enter__(self) -> LazyProgress:
        self._start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: float, description: str | None = None) -> None:
        """Set the amount of work done so far (may be fractional) and optionally the label."""
        self._done = done
        if not self.enabled:
            return
        if self._progress is None:
            if time.monotonic() - self._start < self.delay:
                return
            self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        assert self._task is not None
        self._progress.update(self._task, completed=done, description=description or self.description)
