"""Analytic FLOP counts (floating-point operations, not multiply-accumulates: one MAC is 2 FLOPs).

Per application of a layer to one input row:

- dense ``nn.Linear``: ``2 · in · out`` (the matrix product; bias adds are not counted);
- ACDC cascade (thesis §3.10.6): ``K · (4N + 5N log2 N)`` for K factors of working size N;
- Fastfood (§3.9): per block of size d two Walsh–Hadamard transforms of ``d log2 d`` additions each plus the three
  diagonals S, G, B (``3d`` multiplications): ``blocks · (2 d log2 d + 3d)``.

Convolutions are counted from their output size: ``2 · (C_in / groups) · k_h · k_w · C_out · H_out · W_out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.layers.lowrank import LowRankLinear


def acdc_flops(size: int, depth: int) -> int:
    """``K (4N + 5N log2 N)`` FLOPs per row (thesis §3.10.6)."""
    return int(round(depth * (4 * size + 5 * size * math.log2(size)))) if size > 1 else 4 * depth


def fastfood_flops(d: int, blocks: int) -> int:
    """``blocks (2 d log2 d + 3 d)`` FLOPs per row."""
    return blocks * (2 * d * int(math.log2(d)) + 3 * d)


def dense_flops(in_features: int, out_features: int) -> int:
    """``2 · in · out`` FLOPs per row."""
    return 2 * in_features * out_features


def flops_per_row(module: nn.Module) -> int | None:
    """FLOPs of one application to a single input row, for linear-like layers; None for anything else."""
    if isinstance(module, ACDCLinear):
        return acdc_flops(module.size, module.depth)
    if isinstance(module, FastfoodLinear):
        return fastfood_flops(module.d, module.blocks)
    if isinstance(module, LowRankLinear):
        return 2 * module.rank * (module.in_features + module.out_features)
    if isinstance(module, nn.Linear) and not isinstance(module.weight, nn.parameter.UninitializedParameter):
        return dense_flops(module.in_features, module.out_features)
    return None


def flops_of_call(module: nn.Module, inputs: tuple, output: object) -> int | None:
    """FLOPs of one observed forward call (all rows), or None when the layer type is not counted."""
    per_row = flops_per_row(module)
    if per_row is not None and inputs and isinstance(inputs[0], torch.Tensor):
        rows = inputs[0].numel() // max(1, inputs[0].shape[-1])
        return per_row * rows
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(output, torch.Tensor):
        kernel = math.prod(module.kernel_size)
        per_output = 2 * (module.in_channels // module.groups) * kernel
        return per_output * output.numel()
    return None
