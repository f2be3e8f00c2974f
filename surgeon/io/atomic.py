"""Atomic file writes: a failed or interrupted write never leaves a partial file at the destination."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".surgeon-", suffix=os.path.splitext(path)[1] + ".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
