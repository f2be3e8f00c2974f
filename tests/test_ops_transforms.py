"""DCT and Walsh–Hadamard transforms against independent oracles (scipy, eq. 3.27 built by hand)."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

from surgeon.ops.dct import dct, idct, matmul_wins, resolve_engine, transform_
from surgeon.ops.hadamard import fwht, kronecker_split

SIZES = [1, 2, 3, 7, 64, 100, 1000, 1024, 4096]
ENGINES = ["matmul", "scipy", "torch"]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _eq327(n: int) -> np.ndarray:
    """DCT-II matrix written out from the thesis formula, entry by entry."""
    c = np.empty((n, n))
    for k in range(n):
        eps = 1 / math.sqrt(2) if k == 0 else 1.0
        for i in range(n):
            c[k, i] = math.sqrt(2 / n) * eps * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
    return c


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_dct_matches_scipy(n, dtype, engine):
    x = torch.randn(3, 5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    want2 = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    want3 = scipy.fft.idct(x.numpy(), type=2, norm="ortho", axis=-1)
    xin = x.to(dtype)
    got2, got3 = dct(xin, engine=engine), idct(xin, engine=engine)
    assert got2.dtype == dtype and got3.dtype == dtype
    scale = max(1.0, float(np.abs(want2).max()))
    np.testing.assert_allclose(got2.double().numpy(), want2, atol=TOL[dtype] * scale, rtol=0)
    np.testing.assert_allclose(got3.double().numpy(), want3, atol=TOL[dtype] * scale, rtol=0)
    assert torch.equal(xin, x.to(dtype)), "the transform must not modify its input"


@pytest.mark.parametrize("n", [1, 5, 16, 33])
def test_dct_equals_thesis_matrix(n):
    x = torch.randn(4, n, dtype=torch.float64)
    c = _eq327(n)
    np.testing.assert_allclose(dct(x).numpy(), x.numpy() @ c.T, atol=1e-12)
    np.testing.assert_allclose(idct(x).numpy(), x.numpy() @ c, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", [(2, 9), (3, 1, 16)])
def test_dct_gradcheck(engine, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct(t, engine=engine), (x,))
    assert torch.autograd.gradcheck(lambda t: idct(t, engine=engine), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dct_reduced_precision_computes_in_fp32(dtype):
    x = torch.randn(4, 256).to(dtype)
    want = scipy.fft.dct(x.float().numpy(), norm="ortho", axis=-1)
    got = dct(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.float().numpy(), want, atol=0.05, rtol=0.02)


def test_engine_selection(monkeypatch):
    x = torch.randn(2, 8)
    assert resolve_engine(x) == "matmul"
    assert resolve_engine(torch.randn(2, 4096)) == "scipy"
    assert resolve_engine(torch.randn(1, 128)) == "matmul" and resolve_engine(torch.randn(1, 256)) == "scipy"
    assert resolve_engine(torch.randn(3, 5, 128)) == "matmul", "rows are counted over every leading dim"
    assert resolve_engine(torch.randn(64, 7, 128)) == "scipy"
    monkeypatch.setenv("SURGEON_DCT_ENGINE", "torch")
    assert resolve_engine(x) == "torch"
    monkeypatch.setenv("SURGEON_DCT_ENGINE", "matmul")
    assert resolve_engine(torch.randn(2, 4096)) == "matmul"
    with pytest.raises(ValueError, match="unknown DCT engine"):
        resolve_engine(x, "fftw")


def test_matmul_crossover_rule():
    assert all(matmul_wins(n, rows) for n in (1, 16, 64) for rows in (1, 1024, 10**6))
    assert matmul_wins(128, 16) and not matmul_wins(128, 64)
    assert not matmul_wins(256, 1)
    assert not matmul_wins(512, 1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", [2, 3])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (2, 3, 17), (5, 64), (4, 2, 128), (1, 256), (3, 300)])
def test_in_place_transform_matches_scipy(shape, kind, engine, monkeypatch):
    """The cascade's in-place transform, whichever engine the size picks or the environment forces."""
    monkeypatch.setenv("SURGEON_DCT_ENGINE", engine)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
        fn = scipy.fft.dct if kind == 2 else scipy.fft.idct
        want = fn(x.double().numpy(), type=2, norm="ortho", axis=-1)
        got = transform_(x, kind)
        assert got.data_ptr() == x.data_ptr() and got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), want, atol=TOL[dtype] * 10, rtol=0)


def test_matmul_engine_non_contiguous_and_half_inputs():
    x = torch.randn(6, 40, dtype=torch.float64)[:, ::2]          # stride 2 along the transformed axis
    np.testing.assert_allclose(dct(x, engine="matmul").numpy(), scipy.fft.dct(x.numpy(), norm="ortho", axis=-1),
                               atol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        h = torch.randn(3, 5, 48).to(dtype)
        got = idct(h, engine="matmul")
        assert got.dtype == dtype
        np.testing.assert_allclose(got.float().numpy(), scipy.fft.idct(h.float().numpy(), norm="ortho", axis=-1),
                                   atol=0.05, rtol=0.02)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256, 1024, 4096])
@pytest.mark.parametrize("normalized", [False, True])
def test_fwht_matches_scipy_hadamard(n, normalized):
    x = torch.randn(3, 2, n, dtype=torch.float64)
    h = scipy.linalg.hadamard(n).astype(np.float64)
    if normalized:
        h /= math.sqrt(n)
    np.testing.assert_allclose(fwht(x, normalized=normalized).numpy(), x.numpy() @ h, atol=1e-9 * math.sqrt(n))


def test_fwht_large_uses_three_kronecker_factors():
    n = 2**15
    assert kronecker_split(n) == [128, 128, 2]
    from surgeon.ops.hadamard import balanced_split

    assert balanced_split(n) == [32, 32, 32], "the torch path splits evenly"
    x = torch.randn(2, n, dtype=torch.float64)
    # H_N = H_2 ⊗ H_{N/2}: the first half of the output is H(x_lo + x_hi), the second H(x_lo - x_hi).
    lo, hi = x[:, : n // 2], x[:, n // 2:]
    want = torch.cat([fwht(lo + hi), fwht(lo - hi)], -1)
    torch.testing.assert_close(fwht(x), want)
    torch.testing.assert_close(fwht(fwht(x, normalized=True), normalized=True), x)


@pytest.mark.parametrize("n", [256, 1024, 2048])
def test_fwht_balanced_split_matches_scipy_hadamard(n):
    from surgeon.ops.hadamard import balanced_split

    blocks = balanced_split(n)
    assert math.prod(blocks) == n and max(blocks) <= 128 and max(blocks) <= 2 * min(blocks)
    x = torch.randn(2, n, dtype=torch.float64)
    want = x.numpy() @ scipy.linalg.hadamard(n).astype(np.float64) / math.sqrt(n)
    np.testing.assert_allclose(fwht(x, normalized=True).numpy(), want, atol=1e-10)
    got32 = fwht(x.float(), normalized=True)
    np.testing.assert_allclose(got32.double().numpy(), want, atol=1e-5)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(2, 12))


def test_fwht_gradcheck_and_half():
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fwht(t, normalized=True), (x,))
    y = fwht(torch.full((2, 4096), 60.0, dtype=torch.float16), normalized=True)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


@pytest.mark.parametrize("direct", [True, False])
def test_in_place_pocketfft_binding_and_public_fallback_match_scipy(direct, monkeypatch):
    """The cascade calls scipy's pocketfft binding directly when it agrees with scipy.fft on a probe (it does on
    the pinned scipy), else the public functions; both give scipy's orthonormal DCT-II / DCT-III in place."""
    import importlib

    dct_module = importlib.import_module("surgeon.ops.dct")   # the package's `dct` attribute is the function
    assert dct_module._binding_agrees()
    monkeypatch.setattr(dct_module, "_DIRECT_POCKETFFT", direct)
    monkeypatch.setenv("SURGEON_DCT_ENGINE", "scipy")
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 2, 520, dtype=torch.float64).to(dtype)
        for kind, fn in ((2, scipy.fft.dct), (3, scipy.fft.idct)):
            want = fn(x.double().numpy(), type=2, norm="ortho", axis=-1)
            got = transform_(x.clone(), kind)
            np.testing.assert_allclose(got.double().numpy(), want, atol=TOL[dtype] * 10, rtol=0)
