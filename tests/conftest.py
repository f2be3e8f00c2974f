"""Test-session set-up shared by every test module."""

import os

import pytest
import torch

# Without a GPU the Triton kernels run on the CPU through Triton's interpreter. Triton decides between compiling
# and interpreting when a kernel is defined, so this must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tf32_dots(monkeypatch):
    """Make the Triton interpreter multiply like a GPU's tensor cores in TF32.

    The interpreter runs every ``tl.dot`` as an exact fp32 matmul whatever its ``input_precision``; on the GPU a
    ``"tf32"`` dot keeps only the top 10 mantissa bits of each operand, and ``"tf32x3"`` sums three such products
    of the operands' high and low TF32 parts. This fixture does the same (truncating, the worse of truncating
    and rounding) so the tolerance tables are checked against the error the kernels will really have. No effect
    when the kernels run compiled on a GPU.
    """
    import numpy as np
    from triton.runtime import interpreter

    plain_dot = interpreter.InterpreterBuilder.create_dot

    def truncated(handle):
        data = handle.data
        if data.dtype != np.float32:
            return handle
        bits = data.view(np.uint32) & np.uint32(0xFFFFE000)
        return interpreter.TensorHandle(bits.view(np.float32), handle.dtype.scalar)

    def split(handle):
        high = truncated(handle)
        low = interpreter.TensorHandle(handle.data - high.data, handle.dtype.scalar)
        return high, truncated(low)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        mode = str(input_precision).upper()
        if mode.endswith("TF32X3"):  # hi·hi + hi·lo + lo·hi, as Triton lowers it
            (a_hi, a_lo), (b_hi, b_lo) = split(a), split(b)
            d = plain_dot(self, a_lo, b_hi, d, input_precision, max_num_imprecise_acc)
            d = plain_dot(self, a_hi, b_lo, d, input_precision, max_num_imprecise_acc)
            return plain_dot(self, a_hi, b_hi, d, input_precision, max_num_imprecise_acc)
        if mode.endswith("TF32"):
            a, b = truncated(a), truncated(b)
        return plain_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
