"""``surgeon convert``: make a model's Linear layers structured and print what it saved."""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated

import torch
import typer

from surgeon.cli.failures import InputError, UsageError, run_guarded
from surgeon.cli.options import (
    ArchOption,
    ExcludeOption,
    ForceOption,
    IncludeOption,
    InputShapeOption,
    JsonOption,
    OutputOption,
    QuietOption,
    SeedOption,
    TrustOption,
    parse_depth,
    regex_union,
)
from surgeon.cli.output import Output
from surgeon.cli.pipeline import transform_and_save


class LinearKind(str, Enum):
    acdc = "acdc"
    fastfood = "fastfood"


class InitKind(str, Enum):
    random = "random"
    fit = "fit"


def load_calibration(path: str, batch_size: int = 64) -> list[torch.Tensor]:
    """Calibration inputs from a tensor file (``.pt`` read weights-only, or ``.npy``): (N, ...) split in batches."""
    if not os.path.isfile(path):
        raise InputError(f"--calib {path}: no such file")
    try:
        if path.endswith(".npy"):
            import numpy as np

            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise InputError(f"--calib {path}: not a tensor file ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from exc
    if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] == 0:
        raise InputError(f"--calib {path}: expected one tensor of inputs shaped (N, ...)")
    if data.is_floating_point():
        data = data.float()
    return list(data.split(batch_size))


def convert_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    linear: Annotated[LinearKind, typer.Option("--linear", help="Structured layer to use.")] = LinearKind.acdc,
    depth: Annotated[str, typer.Option("--depth", help="ACDC factors per layer (1-1024), or 'auto'.")] = "12",
    output: OutputOption = None,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    init: Annotated[InitKind, typer.Option("--init", help="random (train from scratch) or fit (keep a "
                                                          "trained layer's map).")] = InitKind.random,
    calib: Annotated[str | None, typer.Option("--calib", help="Tensor file of model inputs for --init fit.")] = None,
    max_error: Annotated[float | None, typer.Option("--max-error", help="Relative error tolerance for --depth "
                                                                        "auto.")] = None,
    seed: SeedOption = None,
    arch: ArchOption = None,
    trust: TrustOption = False,
    input_shape: InputShapeOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Replace the model's nn.Linear layers with ACDC cascades or Adaptive Fastfood transforms.

    Example: surgeon convert model.pt --linear acdc --depth 12
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.surgery.convert import convert

        parsed_depth = parse_depth(depth)
        if max_error is not None and not 0 < max_error < 1:
            raise UsageError(f"--max-error must be between 0 and 1, got {max_error}")
        if parsed_depth == "auto" and init is not InitKind.fit:
            raise UsageError("--depth auto needs --init fit (it picks the smallest depth whose fit meets "
                             "--max-error)")
        if calib is not None and init is not InitKind.fit:
            raise UsageError("--calib is only used with --init fit")
        calibration = load_calibration(calib) if calib else None
        kwargs: dict = {"depth": parsed_depth} if linear is LinearKind.acdc else {}
        if max_error is not None:
            kwargs["max_error"] = max_error
        transform_and_save(out, model=model, output=output, tag=linear.value, arch=arch, trust=trust, force=force,
                           input_shape=input_shape, targets="nn.Linear layer or F.linear call",
                           transform=lambda loaded: convert(
                               loaded.model, linear=linear.value, include=regex_union(include),
                               exclude=regex_union(exclude), init=init.value, calibration=calibration, seed=seed,
                               **kwargs))

    run_guarded(out, action)
