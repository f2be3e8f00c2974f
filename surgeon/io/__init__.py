"""Compressed checkpoints (safetensors + surgery recipe) and compact ONNX export of converted models."""

from surgeon.io.checkpoint import CheckpointError, apply_recipe, file_size, load, read_checkpoint, save
from surgeon.io.lowering import LoweredACDC, LoweredFastfood, dct_factors, lower_for_export
from surgeon.io.onnx_export import ExportError, ExportResult, export_onnx, onnx_latency, param_bytes, state_bytes

__all__ = [
    "CheckpointError",
    "ExportError",
    "ExportResult",
    "LoweredACDC",
    "LoweredFastfood",
    "apply_recipe",
    "dct_factors",
    "export_onnx",
    "file_size",
    "load",
    "lower_for_export",
    "onnx_latency",
    "param_bytes",
    "read_checkpoint",
    "save",
    "state_bytes",
]
