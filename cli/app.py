"""The ``surgeon`` command: parses, calls the library, renders. Nothing else lives here."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as parser_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as parser_errors

from surgeon import __version__
from surgeon.cli.bench import bench_command
from surgeon.cli.compare import compare_command
from surgeon.cli.convert import convert_command
from surgeon.cli.distill import distill_command
from surgeon.cli.example import example_command
from surgeon.cli.export import export_command
from surgeon.cli.failures import EXIT_USAGE, Interrupted, install_signal_handlers, interrupted_message
from surgeon.cli.noise import mollify_command, noisify_command
from surgeon.cli.output import Output
from surgeon.cli.report import report_command
from surgeon.cli.train import train_command


class OneLineErrors(TyperGroup):
    """Parser errors (unknown option, bad choice, missing argument) as one ``error:`` line and exit code 2, the
    way the commands report their own usage errors, instead of click's four-line usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except parser_errors.NoArgsIsHelpError as exc:  # bare ``surgeon``: the help, as click prints it
            exc.show()
            result = exc.exit_code
        except parser_errors.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "surgeon"
            Output().error(f"{exc.format_message()} (see {command} --help)")
            result = EXIT_USAGE
        except parser_errors.ClickException as exc:
            Output().error(exc.format_message())
            result = exc.exit_code
        except typer.Abort:
            result = 1
        except Interrupted as exc:  # outside a command body (while parsing, or after it returned)
            message, result = interrupted_message(exc)
            Output().error(message)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
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


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Library warnings as one ``warning:`` line, not Python's two (location and source line)."""
    Output().warn(str(message))


def main() -> None:
    install_signal_handlers()
    warnings.showwarning = _warning_line
    app()


if __name__ == "__main__":
    main()
