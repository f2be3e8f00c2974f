"""``surgeon report``: parameters, storage, FLOPs and activation memory, per layer and in total."""

from __future__ import annotations

from typing import Annotated

import typer

from surgeon.cli.failures import run_guarded
from surgeon.cli.models import build_arch, example_inputs, load_model
from surgeon.cli.options import (
    ArchOption,
    InputShapeOption,
    JsonOption,
    QuietOption,
    TrustOption,
    parse_shape,
)
from surgeon.cli.output import Output


def report_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Original model to compare with (file or example:NAME); defaults to the original "
                           "architecture of a surgeon checkpoint.")] = None,
    arch: ArchOption = None,
    trust: TrustOption = False,
    input_shape: InputShapeOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Print the report table of a model (before→after against a baseline).

    Example: surgeon report alexnet.acdc.safetensors --input-shape 1,3,224,224
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.reporting import report

        shape = parse_shape(input_shape)
        loaded = load_model(model, arch=arch, trust=trust)
        if baseline is not None:
            reference = load_model(baseline, arch=arch, trust=trust).model
        elif loaded.kind == "checkpoint" and loaded.arch:
            reference = build_arch(loaded.arch)
        else:
            reference = None
        result = report(loaded.model, baseline=reference,
                        example_inputs=example_inputs(loaded, shape))
        out.show(result)
        out.data(result.to_dict())

    run_guarded(out, action)
