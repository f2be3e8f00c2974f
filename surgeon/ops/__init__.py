"""Transforms and structured-layer operations as plain functions, batched on the last dimension."""

from surgeon.ops.acdc import acdc_cascade_ref, acdc_factor_ref
from surgeon.ops.dct import dct, dct_matrix, idct
from surgeon.ops.fastfood import fastfood_ref
from surgeon.ops.hadamard import fwht, hadamard_matrix

__all__ = ["acdc_cascade_ref", "acdc_factor_ref", "dct", "dct_matrix", "fastfood_ref", "fwht", "hadamard_matrix",
           "idct"]
