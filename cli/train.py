"""``surgeon train``: run a recipe that reproduces one of the thesis's experiments."""

from __future__ import annotations

from typing import Annotated

import typer

from surgeon.cli.failures import run_guarded
from surgeon.cli.options import JsonOption, QuietOption, SeedOption
from surgeon.cli.output import Output


def train_command(
    recipe: Annotated[str, typer.Argument(help="Recipe name (e.g. acdc_regression) or path to a recipe YAML.")],
    quick: Annotated[bool, typer.Option("--quick", help="The ≤30 s version of the recipe.")] = False,
    out_dir: Annotated[str | None, typer.Option("--output", "-o", "--out",
                                                help="Output folder (default runs/<recipe>).")] = None,
    seed: SeedOption = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")]
    = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run a recipe: train, write metrics.json and a plot.

    Example: surgeon train acdc_regression --quick
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.recipes import run_recipe

        metrics = run_recipe(recipe, quick=quick, out_dir=out_dir, seed=seed, device=device,
                             progress=out.progress_enabled())
        out.data(metrics)
        out.info(f"metrics written to {metrics.get('out_dir', out_dir or 'runs/')}")

    run_guarded(out, action)
