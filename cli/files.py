"""Output paths: refuse to clobber, write atomically, never touch the input, know what was written.

An output is a ``.safetensors`` checkpoint, a ``.pt`` pickled module, or a Hugging Face folder (``--format hf``,
or any ``-o`` path ending in ``/``), written whole in a temporary sibling and placed atomically.
"""

from __future__ import annotations

import os
import tempfile

from surgeon.cli.failures import InputError, UsageError
from surgeon.io.atomic import write_atomically, write_folder_atomically

#: What ``--format`` may name; ``.pt`` outputs are chosen by their suffix alone.
FORMATS = ("safetensors", "hf")

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
    """``dir/stem.tag.safetensors`` beside the input (in the working directory for ``example:NAME``; beside, not
    inside, a Hugging Face folder). ``suffix=""`` names a folder."""
    if model_spec.startswith("example:"):
        return f"{model_spec.split(':', 1)[1]}.{tag}{suffix}"
    model_spec = os.path.normpath(model_spec)
    stem = os.path.basename(model_spec)
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join(os.path.dirname(model_spec), f"{stem}.{tag}{suffix}")


def output_format(path: str, format: str | None) -> str:
    """``"safetensors"``, ``"pt"`` or ``"hf"`` for output ``path``: ``format`` if given (checked against the
    suffix), else from the path (a trailing ``/`` names a Hugging Face folder)."""
    inferred = ("hf" if path.endswith(("/", os.sep)) else "pt" if path.endswith(".pt")
                else "safetensors" if path.endswith(".safetensors") else None)
    if format is None:
        if inferred is None:
            raise UsageError(f"output {path} must end with .safetensors or .pt (or with / for a Hugging Face "
                             "folder, or pass --format hf)")
        return inferred
    if format == "hf" and inferred in ("safetensors", "pt"):
        raise UsageError(f"--format hf writes a folder, but output {path} names a .{inferred} file")
    if format != "hf" and inferred != format:
        raise UsageError(f"output {path} must end with .{format} for --format {format}")
    return format


def resolve_output(model_spec: str, output: str | None, format: str | None, tag: str) -> tuple[str, str]:
    """(path, format) of a transform's output: ``-o`` or the default beside the input (``.safetensors``, or a
    folder for ``--format hf``)."""
    if output is None:
        output = default_output(model_spec, tag, "" if format == "hf" else ".safetensors")
        return output, format or "safetensors"
    return output, output_format(output, format)


def _overlaps(path: str, other: str) -> bool:
    """Whether one of the two paths is, or lies inside, the other (a folder output must not hold the input)."""
    a, b = os.path.realpath(path), os.path.realpath(other)
    return os.path.commonpath([a, b]) in (a, b)


def check_output(path: str, *, force: bool, inputs: tuple[str, ...] = (), suffixes: tuple[str, ...] = (),
                 folder: bool = False) -> str:
    """Validate ``path`` (a file, or a ``folder``) before any work is done, so a failing command never leaves a
    partial output; returns it (without a trailing ``/``)."""
    if suffixes and not path.endswith(suffixes):
        raise UsageError(f"output {path} must end with {' or '.join(suffixes)}")
    path = (path.rstrip(os.sep) or os.sep) if folder else path
    absolute = os.path.abspath(path)
    if any(os.path.exists(i) and os.path.abspath(i) == absolute for i in inputs):
        raise UsageError(f"output {path} is the input; the input is never modified, choose another path")
    clash = next((i for i in inputs if os.path.exists(i) and (os.path.isdir(i) or folder) and _overlaps(i, path)),
                 None)
    if clash is not None:
        raise UsageError(f"output {path} and the input {clash} would overlap (one inside the other); the input is "
                         "never modified, choose another path")
    if folder and os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
        raise InputError(f"output {path} exists and is not a folder")
    if not folder and os.path.isdir(path):
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


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def save_model(model, path: str, *, arch: str | None, dtype=None, force: bool = False,
               format: str | None = None) -> int:
    """Write ``model`` to ``path`` in ``format`` (default: by the extension): ``.safetensors`` (weights + recipe;
    the original architecture's spec is recorded), ``.pt`` (a whole pickled module) or ``hf`` (a Hugging Face
    folder, :func:`surgeon.save_pretrained`'s files). Returns the bytes written."""
    import torch

    from surgeon.cli.models import ARCH_METADATA_KEY
    from surgeon.io.checkpoint import save

    if format == "hf":
        from surgeon.io.hf import write_pretrained

        write_folder_atomically(path, lambda tmp: write_pretrained(model, tmp, dtype=dtype), overwrite=force)
        return _folder_bytes(path)
    if path.endswith(".safetensors"):
        metadata = {ARCH_METADATA_KEY: arch} if arch else None
        return save(model, path, dtype=dtype, metadata=metadata, overwrite=force)
    if dtype is not None:
        raise UsageError("--dtype applies to .safetensors outputs only")
    place_file(path, lambda tmp: torch.save(model, tmp), force=force)
    return os.path.getsize(path)
