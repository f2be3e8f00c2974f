"""The ``surgeon`` command: parses, calls the library, renders. Nothing else lives here."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from surgeon import __version__
from surgeon.cli.bench import bench_command
from surgeon.cli.compare import compare_command
from surgeon.cli.convert import convert_command
from surgeon.cli.distill import distill_command
from surgeon.cli.example import example_command
from surgeon.cli.export import export_command
from surgeon.cli.noise import mollify_command, noisify_command
from surgeon.cli.report import report_command
from surgeon.cli.train import train_command

app = typer.Typer(
    name="surgeon",
    help="Model surgery for PyTorch: structured linear layers (ACDC, Adaptive Fastfood) and noisy/mollified "
         "activations.\n\nExample: surgeon convert example:alexnet --linear acdc --depth 12",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"surgeon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    if debug:
        os.environ["SURGEON_DEBUG"] = "1"


app.command("convert")(convert_command)
app.command("report")(report_command)
app.command("export")(export_command)
app.command("noisify")(noisify_command)
app.command("mollify")(mollify_command)
app.command("bench")(bench_command)
app.command("train")(train_command)
app.command("example")(example_command)
app.command("distill")(distill_command)
app.command("compare")(compare_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
