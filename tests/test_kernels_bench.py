"""Non-GPU parts of the kernel benchmark."""

import pytest
import torch

from surgeon.bench.kernels import achieved_gbps, bench_kernels, bytes_moved


def test_bandwidth_arithmetic():
    assert bytes_moved(4096, 1024, torch.float32, "fwd") == 2 * 4096 * 1024 * 4
    assert bytes_moved(4096, 1024, torch.bfloat16, "fwd+bwd") == 5 * 4096 * 1024 * 2
    assert achieved_gbps(2_000_000_000, 1000.0) == pytest.approx(2.0)
    assert achieved_gbps(bytes_moved(1, 256, torch.float32, "fwd"), 1e-3) == pytest.approx(2.048)
    with pytest.raises(ValueError):
        achieved_gbps(1, 0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        bench_kernels(device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_runs_on_gpu():
    rows = bench_kernels(sizes=(512,), batch=256, dtypes=("fp32",))
    assert {r.pass_ for r in rows} == {"fwd", "fwd+bwd"} and all(r.ms > 0 for r in rows)
