"""Definitions shared by the torch ops (:mod:`surgeon.ops`) and the Triton kernels (:mod:`surgeon.kernels`).

Both layers import from here and never from each other's internals, so the dependency runs one way:
``surgeon.ops.dispatch`` → ``surgeon.kernels`` → ``surgeon.primitives`` ← ``surgeon.ops``. Nothing here imports
triton.
"""

from surgeon.primitives.activations import ACTIVATIONS, Activation, activation_spec, canonical_activation
from surgeon.primitives.autograd import records_grad
from surgeon.primitives.matrices import dct_matrix, hadamard_matrix, is_power_of_two, next_power_of_two
from surgeon.primitives.precision import compute_dtype
from surgeon.primitives.support import KERNEL_DTYPES, KERNEL_MAX_N, KERNEL_MIN_N, kernel_supported

__all__ = ["ACTIVATIONS", "KERNEL_DTYPES", "KERNEL_MAX_N", "KERNEL_MIN_N", "Activation", "activation_spec",
           "canonical_activation", "compute_dtype", "dct_matrix", "hadamard_matrix", "is_power_of_two",
           "kernel_supported", "next_power_of_two", "records_grad"]
