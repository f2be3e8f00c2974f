"""``surgeon example``: write a built-in architecture to a file, to try the other commands on."""

from __future__ import annotations

from typing import Annotated

import torch
import typer

from surgeon import zoo
from surgeon.cli.failures import run_guarded
from surgeon.cli.files import check_output, place_file
from surgeon.cli.options import ForceOption, OutputOption, QuietOption
from surgeon.cli.output import Output


def example_command(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(zoo.example_names())}.")],
    output: OutputOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Save a freshly initialised built-in model as a self-describing state_dict (.pt, no pickled code).

    Example: surgeon example alexnet -o model.pt && surgeon convert model.pt --linear acdc --depth 12
    """
    out = Output(quiet)

    def action() -> None:
        model = zoo.build_example(name)
        target = output or f"{name}.pt"
        check_output(target, force=force, suffixes=(".pt",))
        payload = {"arch": f"example:{name}", "state_dict": model.state_dict()}
        place_file(target, lambda tmp: torch.save(payload, tmp), force=force)
        params = sum(p.numel() for p in model.parameters())
        out.info(f"wrote {target}: example:{name}, {params:,} parameters")

    run_guarded(out, action)
