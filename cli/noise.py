"""``surgeon noisify`` and ``surgeon mollify``: trainable replacements for saturating units."""

from __future__ import annotations

from typing import Annotated

import typer

from surgeon.cli.failures import run_guarded
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
    build_config,
    regex_union,
)
from surgeon.cli.output import Output
from surgeon.cli.pipeline import transform_and_save
from surgeon.noise.noisy import NOISY_MODES

NOISIFY_FLAGS = {"mode": "--mode", "targets": "--targets", "c": "--c"}
MOLLIFY_FLAGS = {"c": "--c", "skip": "--skip"}


def noisify_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    mode: Annotated[str, typer.Option("--mode", help=f"Noise form (thesis §4.3): {', '.join(NOISY_MODES)}.")]
    = "nah",
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated: sigmoid, tanh.")] = "sigmoid,tanh",
    c: Annotated[float | None, typer.Option("--c", help="Noise scale c (default: the mode's).")] = None,
    output: OutputOption = None,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    arch: ArchOption = None,
    trust: TrustOption = False,
    input_shape: InputShapeOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Replace sigmoid/tanh (modules, calls, LSTM/GRU gates) with noisy hard-saturating units.

    Example: surgeon noisify example:lstm-lm --mode nah -o lm.nah.safetensors
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.surgery.noisify import noisify

        chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
        config = build_config("noisify", "noisify", NOISIFY_FLAGS, mode=mode.strip().lower(), targets=chosen, c=c)
        transform_and_save(out, model=model, output=output, tag=f"noisy-{config.mode}", arch=arch, trust=trust,
                           force=force, input_shape=input_shape, targets="sigmoid/tanh",
                           transform=lambda loaded: noisify(
                               loaded.model, config, include=regex_union(include), exclude=regex_union(exclude)))

    run_guarded(out, action)


def mollify_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    c: Annotated[float | None, typer.Option("--c", help="Noise scale c of the mollified units.")] = None,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="Insert the stochastic skip (eqs. 4.27-4.30).")]
    = True,
    output: OutputOption = None,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    arch: ArchOption = None,
    trust: TrustOption = False,
    input_shape: InputShapeOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Insert mollified activations and stochastic skips (thesis §4.4), annealed while training.

    Example: surgeon mollify example:mlp -o mlp.mollified.safetensors
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.surgery.mollify import mollify

        config = build_config("mollify", "mollify", MOLLIFY_FLAGS, c=c, skip=skip)
        transform_and_save(out, model=model, output=output, tag="mollified", arch=arch, trust=trust, force=force,
                           input_shape=input_shape, targets="activation", transform=lambda loaded: mollify(
                               loaded.model, config, include=regex_union(include), exclude=regex_union(exclude)))

    run_guarded(out, action)
