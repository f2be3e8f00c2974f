"""``surgeon export``: ONNX (with an onnxruntime parity check) or a safetensors checkpoint."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from surgeon.cli.failures import UsageError, run_guarded
from surgeon.cli.files import check_output, default_output, place_file, save_model
from surgeon.cli.models import example_inputs, load_model
from surgeon.cli.options import (
    ArchOption,
    ForceOption,
    InputShapeOption,
    JsonOption,
    OutputOption,
    QuietOption,
    TrustOption,
    parse_dtype,
    parse_shape,
)
from surgeon.cli.output import Output


class ExportFormat(str, Enum):
    onnx = "onnx"
    safetensors = "safetensors"


def export_command(
    model: Annotated[str, typer.Argument(help="Model file, or example:NAME for a built-in architecture.")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx or safetensors.")] = ExportFormat.onnx,
    output: OutputOption = None,
    input_shape: InputShapeOption = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Storage dtype for safetensors: fp32, fp16, "
                                                                "bf16.")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime with torch.")] = True,
    arch: ArchOption = None,
    trust: TrustOption = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a (converted) model for deployment.

    Example: surgeon export alexnet.acdc.safetensors --format onnx --input-shape 1,3,224,224
    """
    out = Output(quiet, as_json)

    def action() -> None:
        storage = parse_dtype(dtype)
        shape = parse_shape(input_shape)
        suffix = ".onnx" if format is ExportFormat.onnx else ".safetensors"
        if format is ExportFormat.onnx and storage is not None:
            raise UsageError("--dtype applies to --format safetensors only")
        target = output or default_output(model, "export", suffix)
        check_output(target, force=force, inputs=(model,), suffixes=(suffix,))
        loaded = load_model(model, arch=arch, trust=trust)
        loaded.model.eval()
        if format is ExportFormat.safetensors:
            size = save_model(loaded.model, target, arch=loaded.arch, dtype=storage, force=force)
            out.info(f"wrote {target} ({size / 1e6:.2f} MB)")
            out.data({"path": target, "bytes": size})
            return
        from surgeon.io.onnx_export import export_onnx

        inputs = example_inputs(loaded, shape, required=True)
        results = []
        place_file(target, lambda tmp: results.append(
            export_onnx(loaded.model, (inputs,), tmp, opset=opset, check=check)), force=force)
        summary = results[0].to_dict()
        summary["path"] = target
        out.info(f"wrote {target} ({summary['file_bytes'] / 1e6:.2f} MB; limit for this model "
                 f"{summary['size_limit'] / 1e6:.2f} MB: {'ok' if summary['within_size_limit'] else 'EXCEEDED'})")
        if check:
            out.info(f"onnxruntime parity on batches {summary['checked_batches']}: max abs error "
                     f"{summary['max_abs_error']:.2e}, max relative error {summary['max_rel_error']:.2e} "
                     f"({'ok' if summary['passed'] else 'FAILED'}, tolerance {summary['tolerance']:g})")
        out.data(summary)

    run_guarded(out, action)
