"""``surgeon convert``: make a model's Linear layers structured and print what it saved."""

from __future__ import annotations

import os
from typing import Annotated

import torch
import typer
from torch import nn

from surgeon.cli.failures import InputError
from surgeon.cli.options import SeedOption, build_config, parse_int_or_word, usage_errors
from surgeon.cli.transform_command import TransformJob, transform_command
from surgeon.configs import DEFAULT_DEPTH, config_names
from surgeon.layers.acdc import MAX_DEPTH

# Config fields the options set, for errors in the options' own terms.
FLAGS = {"linear": "--linear", "depth": "--depth", "init": "--init", "max_error": "--max-error", "seed": "--seed",
         "calibration": "--calib", "targets": "--targets"}
# What each target selects, for the error when nothing was.
TARGET_SITES = {"linear": "nn.Linear layer, F.linear call or Conv1D", "conv1x1": "1x1 convolution"}


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


@transform_command
def convert_command(
    model: Annotated[str, typer.Argument(help="Model file, Hugging Face folder, or example:NAME.")],
    linear: Annotated[str, typer.Option(
        "--linear", help=f"Structured layer: {', '.join(config_names('convert'))}.")] = "acdc",
    depth: Annotated[str | None, typer.Option(
        "--depth", help=f"ACDC factors per layer (1-{MAX_DEPTH}, default {DEFAULT_DEPTH}), or 'auto'.")] = None,
    init: Annotated[str, typer.Option("--init", help="random (train from scratch) or fit (keep a trained "
                                                     "layer's map).")] = "random",
    calib: Annotated[str | None, typer.Option("--calib", help="Tensor file of model inputs for --init fit.")] = None,
    max_error: Annotated[float | None, typer.Option("--max-error", help="Relative error tolerance for --depth "
                                                                        "auto.")] = None,
    targets: Annotated[str | None, typer.Option(
        "--targets", help="Comma-separated linear maps to convert: linear (nn.Linear, F.linear, HF Conv1D), "
                          "conv1x1 (1x1 convolutions over channels). Default: linear.")] = None,
    seed: SeedOption = None,
) -> TransformJob:
    """Replace the model's nn.Linear layers with ACDC cascades or Adaptive Fastfood transforms.

    Example: surgeon convert model.pt --linear acdc --depth 12

    Example: surgeon convert gpt2-folder/ --linear fastfood -o gpt2-fastfood/ (a Hugging Face folder)
    """
    from surgeon.surgery.convert import convert

    config = build_config("convert", linear.strip().lower(), FLAGS, depth=parse_int_or_word(depth),
                          init=init.strip().lower(), max_error=max_error, seed=seed,
                          targets=None if targets is None else tuple(t.strip() for t in targets.split(",")))
    calibration = load_calibration(calib) if calib else None

    def apply(model: nn.Module, **selection: object) -> nn.Module:
        with usage_errors(FLAGS):
            return convert(model, config, calibration=calibration, **selection)

    return TransformJob(linear, " or ".join(TARGET_SITES[t] for t in config.targets), apply)
