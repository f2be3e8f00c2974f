"""``surgeon compare``: ACDC, Fastfood and low-rank at several budgets on your model and data; table, JSON, PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from surgeon.cli.distill import DataOption
from surgeon.cli.failures import UsageError, run_guarded
from surgeon.cli.files import check_output
from surgeon.cli.models import load_model
from surgeon.cli.options import ArchOption, ForceOption, JsonOption, QuietOption, TrustOption
from surgeon.cli.output import Output
from surgeon.io.atomic import write_atomically


def _floats(text: str, label: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{label} must be comma-separated numbers, got {text!r}") from None


def compare_command(
    model: Annotated[str, typer.Argument(help="The dense model, or example:NAME.")],
    data: DataOption,
    labels: Annotated[str | None, typer.Option("--labels", help="Class labels for the data rows (accuracy).")] = None,
    budgets: Annotated[str, typer.Option("--budgets", help="Fractions of the layers' parameters kept.")] =
    "0.1,0.25,0.5",
    kinds: Annotated[str, typer.Option("--kinds", help="Structures to compare.")] = "acdc,fastfood,lowrank",
    distill_steps: Annotated[int, typer.Option("--distill-steps", help="Also distil each for N steps.")] = 0,
    json_out: Annotated[str | None, typer.Option("--json-out", help="Write the results as JSON here.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write parameters-vs-error PNG here.")] = None,
    arch: ArchOption = None,
    trust: TrustOption = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Convert MODEL with each structure × budget (init=fit on --data) and compare the results.

    Example: surgeon compare mlp.pt --arch example:mlp --data x.npz --labels y.npz --plot compare.png
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from rich.table import Table

        from surgeon.recovery.compare import TABLE_HEADER, compare, table_rows
        from surgeon.recovery.data import load_tensor

        chosen_budgets = _floats(budgets, "--budgets")
        chosen_kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        for path, suffixes in ((json_out, (".json",)), (plot, (".png",))):
            if path is not None:
                check_output(path, force=force, inputs=(model, data), suffixes=suffixes)
        inputs = load_tensor(data)
        targets = None if labels is None else load_tensor(labels)
        loaded = load_model(model, arch=arch, trust=trust)
        result = compare(loaded.model, inputs.float(), kinds=chosen_kinds, budgets=chosen_budgets,
                         labels=targets, distill_steps=distill_steps)
        table = Table(title="structures × budgets (errors held out)")
        for column in TABLE_HEADER:
            table.add_column(column)
        for row in table_rows(result):
            table.add_row(*row)
        out.show(table)
        if json_out is not None:
            write_atomically(json_out, lambda tmp: Path(tmp).write_text(result.to_json()))
            out.info(f"wrote {json_out}")
        if plot is not None:
            write_atomically(plot, result.plot)
            out.info(f"wrote {plot}")
        out.data(result.to_dict())

    run_guarded(out, action)
