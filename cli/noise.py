"""``surgeon noisify`` and ``surgeon mollify``: trainable replacements for saturating units."""

from __future__ import annotations

from enum import Enum
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
    regex_union,
)
from surgeon.cli.output import Output
from surgeon.cli.pipeline import transform_and_save


class NoiseMode(str, Enum):
    nan = "nan"
    nah = "nah"
    nani = "nani"
    nanil = "nanil"
    nanis = "nanis"


def noisify_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    mode: Annotated[NoiseMode, typer.Option("--mode", help="Noise form (thesis §4.3).")] = NoiseMode.nah,
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

        kwargs = {} if c is None else {"c": c}
        chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
        transform_and_save(out, model=model, output=output, tag=f"noisy-{mode.value}", arch=arch, trust=trust,
                           force=force, input_shape=input_shape, targets="sigmoid/tanh",
                           transform=lambda loaded: noisify(
                               loaded.model, mode=mode.value, targets=chosen, include=regex_union(include),
                               exclude=regex_union(exclude), **kwargs))

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

        kwargs = {} if c is None else {"c": c}
        transform_and_save(out, model=model, output=output, tag="mollified", arch=arch, trust=trust, force=force,
                           input_shape=input_shape, targets="activation", transform=lambda loaded: mollify(
                               loaded.model, skip=skip, include=regex_union(include), exclude=regex_union(exclude),
                               **kwargs))

    run_guarded(out, action)
