"""The shape every model → transformed model command shares (convert, noisify, mollify).

A command body parses its own options into a :class:`TransformJob`; :func:`transform_command` adds the options
those commands share (output, selection, model loading, report) and runs the job through the load → transform
→ save → report pipeline with one-line errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer
from torch import nn

from surgeon.cli.failures import run_guarded
from surgeon.cli.files import FORMATS
from surgeon.cli.options import (
    ArchOption,
    ExcludeOption,
    ForceOption,
    IncludeOption,
    InputShapeOption,
    JsonOption,
    OutputOption,
    QuietOption,
    TrustOption,
    regex_union,
)
from surgeon.cli.output import Output
from surgeon.cli.pipeline import transform_and_save

OutputFormat = Enum("OutputFormat", {name: name for name in FORMATS}, type=str)
FormatOption = Annotated[OutputFormat | None, typer.Option(
    "--format", "-f", help="safetensors (a checkpoint file) or hf (a Hugging Face folder: config.json, "
                           "model.safetensors, recipe). Default: from -o (a path ending in / is a folder), "
                           "else safetensors.")]

# (name, typer annotation, default) of the options every transform command takes, after its own.
SHARED_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("output", OutputOption, None), ("format", FormatOption, None), ("include", IncludeOption, None),
    ("exclude", ExcludeOption, None),
    ("arch", ArchOption, None), ("trust", TrustOption, False), ("input_shape", InputShapeOption, None),
    ("force", ForceOption, False), ("quiet", QuietOption, False), ("as_json", JsonOption, False),
)


@dataclass(frozen=True)
class TransformJob:
    """What a transform command does to the loaded model: ``apply(model, include=, exclude=)``.

    ``tag`` names the default output file (``model.<tag>.safetensors``); ``targets`` says what the transform looks
    for, for the error when it selected nothing.
    """

    tag: str
    targets: str
    apply: Callable[..., nn.Module]


def transform_command(body: Callable[..., TransformJob]) -> Callable[..., None]:
    """A typer command: ``body``'s own parameters (first ``model``), then :data:`SHARED_OPTIONS`."""
    own = list(inspect.signature(body, eval_str=True).parameters.values())
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in SHARED_OPTIONS]

    def command(**values: Any) -> None:
        common = {name: values.pop(name) for name, _, _ in SHARED_OPTIONS}
        out = Output(common["quiet"], common["as_json"])

        def action() -> None:
            job = body(**values)
            selection = {"include": regex_union(common["include"]), "exclude": regex_union(common["exclude"])}
            transform_and_save(out, model=values["model"], output=common["output"], tag=job.tag, arch=common["arch"],
                               trust=common["trust"], force=common["force"], input_shape=common["input_shape"],
                               targets=job.targets, format=common["format"] and common["format"].value,
                               transform=lambda loaded: job.apply(loaded.model, **selection))

        run_guarded(out, action)

    command.__signature__ = inspect.Signature(own + shared, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + shared}
    command.__name__, command.__qualname__, command.__doc__ = body.__name__, body.__qualname__, body.__doc__
    command.__module__ = body.__module__
    return command
