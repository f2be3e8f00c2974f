"""Output paths: refuse to clobber, write atomically, never touch the input, know what was written."""

from __future__ import annotations

import os
import tempfile

from surgeon.cli.failures import InputError, UsageError
from surgeon.io.atomic import write_atomically

# Outputs this command was asked to write -> what stood at the path beforehand (os.stat identity, or None), so
# an interrupt can tell the truth about which of them now exist.
_planned: dict[str, tuple[int, int, int] | None] = {}


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns


def forget_outputs() -> None:
    """Start a new command's list (one process may run several commands, e.g. under a test runner)."""
    _planned.clear()


def written_outputs() -> list[str]:
    """The planned outputs that were placed (they exist and are not what stood there before)."""
    return [path for path, before in _planned.items()
            if (now := _identity(path)) is not None and now != before]


def default_output(model_spec: str, tag: str, suffix: str = ".safetensors") -> str:
    """``dir/stem.tag.safetensors`` beside the input (in the working directory for ``example:NAME``)."""
    if model_spec.startswith("example:"):
        return f"{model_spec.split(':', 1)[1]}.{tag}{suffix}"
    stem = os.path.basename(model_spec)
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join(os.path.dirname(model_spec), f"{stem}.{tag}{suffix}")


def check_output(path: str, *, force: bool, inputs: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()) -> str:
    """Validate ``path`` before any work is done, so a failing command never leaves a partial file."""
    if suffixes and not path.endswith(suffixes):
        raise UsageError(f"output {path} must end with {' or '.join(suffixes)}")
    absolute = os.path.abspath(path)
    if any(os.path.exists(i) and os.path.abspath(i) == absolute for i in inputs):
        raise UsageError(f"output {path} is the input file; the input is never modified, choose another path")
    if os.path.isdir(path):
        raise InputError(f"output {path} is a directory")
    if os.path.lexists(path) and not force:
        raise InputError(f"output {path} already exists; pass --force to overwrite it")
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise InputError(f"output directory {directory} does not exist")
    try:  # a real probe: permission bits say nothing for root or on read-only file systems
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise InputError(f"output directory {directory} is not writable ({exc.strerror or exc})") from None
    _planned[path] = _identity(path)
    return path


def place_file(path: str, write, *, force: bool) -> None:
    """``write(tmp)`` then place the file atomically; without ``force`` a file that appeared at ``path`` since
    :func:`check_output` (a concurrent command) is not replaced."""
    write_atomically(path, write, overwrite=force)


def save_model(model, path: str, *, arch: str | None, dtype=None, force: bool = False) -> int:
    """Write ``model`` to ``path`` by its extension: ``.safetensors`` (weights + recipe; the original
    architecture's spec is recorded) or ``.pt`` (a whole pickled module). Returns the bytes written."""
    import torch

    from surgeon.cli.models import ARCH_METADATA_KEY
    from surgeon.io.checkpoint import save

    if path.endswith(".safetensors"):
        metadata = {ARCH_METADATA_KEY: arch} if arch else None
        return save(model, path, dtype=dtype, metadata=metadata, overwrite=force)
    if dtype is not None:
        raise UsageError("--dtype applies to .safetensors outputs only")
    place_file(path, lambda tmp: torch.save(model, tmp), force=force)
    return os.path.getsize(path)
