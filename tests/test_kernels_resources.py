"""GPU resources of the kernels, compiled ahead of time for NVIDIA architectures (no GPU needed).

The interpreter runs the kernels on the CPU but never checks what a GPU would refuse: a block asking for more
shared memory than the architecture has fails to launch. These tests compile every kernel the dispatcher can
pick with Triton's bundled ptxas and read the cubin back.
"""

import os

import pytest
import torch
from triton import knobs

from surgeon.kernels.resources import SHARED_LIMITS, kernel_resources, launched_kernels


def _tools_present() -> bool:
    try:
        return os.path.exists(knobs.nvidia.ptxas.path) and os.path.exists(knobs.nvidia.cuobjdump.path)
    except (RuntimeError, AttributeError):
        return False


pytestmark = pytest.mark.skipif(not _tools_present(), reason="triton's NVIDIA tools (ptxas, cuobjdump) are missing")

ALL_SIZES = [2**k for k in range(4, 15)]  # 16 .. 16384, every size the kernels take


@pytest.mark.parametrize("sizes", [ALL_SIZES[:7], ALL_SIZES[7:]], ids=["16-1024", "2048-16384"])
def test_every_launched_kernel_fits_an_h100(sizes):
    rows = kernel_resources(sizes, dtypes=(torch.bfloat16,), arch=90)
    assert [(r.kernel, r.size) for r in rows] == [(k, n) for n in sizes for k in launched_kernels(n, 90)]
    too_big = [(r.kernel, r.size, r.shared_bytes) for r in rows if not r.fits]
    assert not too_big, f"would not launch on sm_90: {too_big}"
    assert all(0 < r.registers <= 255 and r.shared_limit == SHARED_LIMITS[90] for r in rows)


def test_fp32_kernels_fit_an_h100():
    # fp32 I/O multiplies in exact fp32 (FMA, not tensor cores): a different code path through the compiler.
    rows = kernel_resources([64, 128, 256, 1024], dtypes=(torch.float32,), arch=90)
    assert all(r.fits for r in rows), [(r.kernel, r.size, r.shared_bytes) for r in rows if not r.fits]


def test_largest_rows_need_the_staged_kernel():
    """At N = 16384 the register-tile kernel asks for more shared memory than an H100 has; the staged one fits."""
    tile, staged = kernel_resources([16384], arch=90, kernels=("acdc_fwd", "acdc_staged_fwd"))
    assert not tile.fits and staged.fits
    assert launched_kernels(16384, 90)[:2] == ["acdc_staged_fwd", "acdc_staged_bwd"]


def test_a100_takes_the_staged_kernel_at_8192():
    """An A100 gives a block 163 KiB: the 8192 tile does not fit there, so the launch falls back to the staged one."""
    tile, staged = kernel_resources([8192], arch=80, kernels=("acdc_fwd", "acdc_staged_fwd"))
    assert not tile.fits and staged.fits


def test_bad_requests():
    with pytest.raises(ValueError, match="sm_75"):
        kernel_resources([256], arch=75)
    with pytest.raises(ValueError, match="N=100"):
        kernel_resources([100])
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_resources([256], kernels=("gemm",))
