"""Option types shared by the commands, and parsers for their values."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from surgeon.cli.failures import UsageError
from surgeon.errors import ConfigError

if TYPE_CHECKING:
    from surgeon.configs import TransformConfig

ArchOption = Annotated[str | None, typer.Option(
    "--arch", help="Architecture to build: package.module:factory (called with no arguments) or example:NAME.")]
TrustOption = Annotated[bool, typer.Option(
    "--trust", help="Allow loading a whole pickled module; unpickling runs code from the file.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json data).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
OutputOption = Annotated[str | None, typer.Option("--output", "-o", help="Output file.")]
InputShapeOption = Annotated[str | None, typer.Option(
    "--input-shape", help="Example input shape, comma-separated, e.g. 1,3,224,224.")]
IncludeOption = Annotated[list[str] | None, typer.Option(
    "--include", help="Regex (re.fullmatch on module names) of layers to transform; repeatable.")]
ExcludeOption = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Regex of layers to leave untouched; repeatable.")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed for permutations and initialisation.")]

MAX_INPUT_ELEMENTS = 1 << 28  # a 1 GiB fp32 example input; larger shapes are typos
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_int_or_word(text: str | None) -> int | str | None:
    """An integer if ``text`` spells one, else the word (lower case) for the config to judge (``--depth auto``)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text.strip().lower()


def build_config(transform: str, name: str, flags: dict[str, str], **values: Any) -> TransformConfig:
    """The config ``name`` of ``transform`` from the options given (None: not given, the config's default).

    The config checks every value; its error becomes a usage error naming the command-line option (``flags``
    maps config fields to option names: ``{"depth": "--depth"}``).
    """
    from surgeon.configs import named_config

    with usage_errors(flags):
        return named_config(transform, name, "linear").from_options(
            **{k: v for k, v in values.items() if v is not None})


@contextlib.contextmanager
def usage_errors(flags: dict[str, str]) -> Iterator[None]:
    """Turn a ConfigError about one of ``flags``' fields into a usage error naming the option."""
    try:
        yield
    except ConfigError as exc:
        if exc.field in flags and exc.rule:
            raise UsageError(f"{flags[exc.field]} {exc.rule}") from None
        raise


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape``: comma-separated positive integers, at most ``MAX_INPUT_ELEMENTS`` elements in all."""
    if text is None:
        return None
    shape = []
    for entry in text.split(","):
        try:
            size = int(entry)
        except ValueError:
            raise UsageError(f"--input-shape {text!r}: entry {entry.strip()!r} is not an integer "
                             f"(expected e.g. 1,3,224,224)") from None
        if size < 1:
            raise UsageError(f"--input-shape {text!r}: entry {size} is not positive")
        shape.append(size)
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise UsageError(f"--input-shape {text!r} has {math.prod(shape):,} elements; at most "
                         f"{MAX_INPUT_ELEMENTS:,} (2**28) are allowed")
    return tuple(shape)


def parse_dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    if text.lower() not in _DTYPES:
        raise UsageError(f"--dtype must be one of fp32, fp16, bf16, got {text!r}")
    return _DTYPES[text.lower()]


def parse_dtypes(text: str | None) -> tuple[torch.dtype, ...] | None:
    """Comma-separated dtype names (the names ``--dtype`` takes)."""
    if text is None:
        return None
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names or any(name not in _DTYPES for name in names):
        raise UsageError(f"--dtypes takes comma-separated fp32, fp16, bf16; got {text!r}")
    return tuple(_DTYPES[name] for name in names)


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(s < 1 or s > 1 << 16 for s in sizes):
        raise UsageError(f"--sizes must be integers between 1 and 65536, got {text!r}")
    return sizes


def regex_union(patterns: list[str] | None) -> str | None:
    """Repeated --include/--exclude regexes as one regex (the library reads a list as exact names)."""
    if not patterns:
        return None
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"invalid regex {pattern!r}: {exc}") from None
    return patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
