"""``surgeon noisify`` and ``surgeon mollify``: trainable replacements for saturating units."""

from __future__ import annotations

from typing import Annotated

import typer

from surgeon.cli.options import build_config
from surgeon.cli.transform_command import TransformJob, transform_command
from surgeon.noise.noisy import NOISY_MODES

NOISIFY_FLAGS = {"mode": "--mode", "targets": "--targets", "c": "--c"}
MOLLIFY_FLAGS = {"c": "--c", "skip": "--skip"}


@transform_command
def noisify_command(
    model: Annotated[str, typer.Argument(help="Model file, Hugging Face folder, or example:NAME.")],
    mode: Annotated[str, typer.Option("--mode", help=f"Noise form (thesis §4.3): {', '.join(NOISY_MODES)}.")]
    = "nah",
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated: sigmoid, tanh.")] = "sigmoid,tanh",
    c: Annotated[float | None, typer.Option("--c", help="Noise scale c (default: the mode's).")] = None,
) -> TransformJob:
    """Replace sigmoid/tanh (modules, calls, LSTM/GRU gates) with noisy hard-saturating units.

    Example: surgeon noisify example:lstm-lm --mode nah -o lm.nah.safetensors
    """
    from surgeon.surgery.noisify import noisify

    chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
    config = build_config("noisify", "noisify", NOISIFY_FLAGS, mode=mode.strip().lower(), targets=chosen, c=c)
    return TransformJob(f"noisy-{config.mode}", "sigmoid/tanh", lambda m, **selection: noisify(m, config, **selection))


@transform_command
def mollify_command(
    model: Annotated[str, typer.Argument(help="Model file, Hugging Face folder, or example:NAME.")],
    c: Annotated[float | None, typer.Option("--c", help="Noise scale c of the mollified units.")] = None,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="Insert the stochastic skip (eqs. 4.27-4.30).")]
    = True,
) -> TransformJob:
    """Insert mollified activations and stochastic skips (thesis §4.4), annealed while training.

    Example: surgeon mollify example:mlp -o mlp.mollified.safetensors
    """
    from surgeon.surgery.mollify import mollify

    config = build_config("mollify", "mollify", MOLLIFY_FLAGS, c=c, skip=skip)
    return TransformJob("mollified", "activation", lambda m, **selection: mollify(m, config, **selection))
