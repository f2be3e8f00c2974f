"""``surgeon noisify`` and ``surgeon mollify``: trainable replacements for saturating units."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from surgeon.cli.failures import run_guarded
from surgeon.cli.files import check_output, default_output, save_model
from surgeon.cli.models import example_inputs, load_model
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
    parse_shape,
    regex_union,
)
from surgeon.cli.output import Output


class NoiseMode(str, Enum):
    nan = "nan"
    nah = "nah"
    nani = "nani"
    nanil = "nanil"
    nanis = "nanis"


def _finish(out: Output, model_spec: str, loaded, transformed, target: str, input_shape: str | None) -> None:
    from surgeon.reporting import report

    size = save_model(transformed, target, arch=loaded.arch)
    result = report(transformed, baseline=loaded.model, example_inputs=example_inputs(loaded, parse_shape(input_shape)))
    out.show(result)
    out.info(f"wrote {target} ({size / 1e6:.2f} MB)")
    payload = result.to_dict()
    payload["output"] = {"path": target, "bytes": size}
    out.data(payload)


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

        target = output or default_output(model, f"noisy-{mode.value}")
        check_output(target, force=force, inputs=(model,), suffixes=(".safetensors", ".pt"))
        loaded = load_model(model, arch=arch, trust=trust)
        kwargs = {} if c is None else {"c": c}
        chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
        transformed = noisify(loaded.model, mode=mode.value, targets=chosen, include=regex_union(include),
                              exclude=regex_union(exclude), **kwargs)
        _finish(out, model, loaded, transformed, target, input_shape)

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

        target = output or default_output(model, "mollified")
        check_output(target, force=force, inputs=(model,), suffixes=(".safetensors", ".pt"))
        loaded = load_model(model, arch=arch, trust=trust)
        kwargs = {} if c is None else {"c": c}
        transformed = mollify(loaded.model, skip=skip, include=regex_union(include), exclude=regex_union(exclude),
                              **kwargs)
        _finish(out, model, loaded, transformed, target, input_shape)

    run_guarded(out, action)
