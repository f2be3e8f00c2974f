"""The lean CPU inference path of ACDCLinear (pocketfft sizes, no autograd) against dense products built by hand
from the thesis formulas: C from eq. 3.27, each factor ``y = Cᵀ(C(z ⊙ a) ⊙ d + b)`` (eq. 3.24)."""

import sys

import numpy as np
import pytest
import torch

from surgeon import ACDCLinear

threads = sys.modules["surgeon.ops.threads"]


def _dct_matrix(n: int) -> np.ndarray:
    """Eq. 3.27: C[k, m] = sqrt(2/N) eps_k cos(pi (2m + 1) k / 2N), eps_0 = 1/sqrt(2)."""
    k, m = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def _oracle(layer: ACDCLinear, x: torch.Tensor) -> np.ndarray:
    """Row vectors through every factor as dense float64 matrix products."""
    c = _dct_matrix(layer.size)
    a, d = layer.a.detach().double().numpy(), layer.d.detach().double().numpy()
    b = np.zeros_like(a) if layer.b is None else layer.b.detach().double().numpy()
    z = x.double().numpy()
    for k in range(layer.depth):
        y = ((z * a[k]) @ c.T * d[k] + b[k]) @ c
        if k == layer.depth - 1:
            return y
        y = np.maximum(y, 0) if layer.activation == "relu" else y
        z = y[:, layer.perms[k].numpy()] if layer.perms is not None else y


def _scrambled(n: int, depth: int, bias: bool, activation: str | None) -> ACDCLinear:
    layer = ACDCLinear(n, n, depth=depth, bias=bias, activation=activation, seed=3).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(1.0, 0.3)
    return layer


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize(("bias", "activation"), [(True, "relu"), (False, None)])
def test_inference_matches_dense_matrix_products(mode, rows, bias, activation):
    layer = _scrambled(512, 5, bias, activation)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        y = layer(x)
    np.testing.assert_allclose(y.double().numpy(), _oracle(layer, x), rtol=1e-4, atol=1e-4)


def test_leading_dims_and_fp64_follow_the_oracle():
    layer = _scrambled(512, 3, True, "relu").double()
    x = torch.randn(2, 3, 512, dtype=torch.float64)
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (2, 3, 512) and y.dtype == torch.float64
    np.testing.assert_allclose(y.reshape(6, 512).numpy(), _oracle(layer, x.reshape(6, 512)), rtol=1e-10, atol=1e-10)


def test_parameter_edits_are_followed_between_calls():
    """The split factors are kept between calls: in-place edits, new storage and load_state_dict must show."""
    layer = _scrambled(512, 4, True, "relu")
    x = torch.randn(4, 512)
    with torch.inference_mode():
        layer(x)
    with torch.no_grad():
        layer.a.mul_(1.5)                 # in place
        layer.d.data = layer.d.data * 0.5 + 0.25   # new storage under the same parameter
    with torch.inference_mode():
        np.testing.assert_allclose(layer(x).numpy(), _oracle(layer, x), rtol=1e-4, atol=1e-4)
    other = _scrambled(512, 4, True, "relu")
    with torch.no_grad():
        other.b.normal_(0.0, 1.0)
    layer.load_state_dict(other.state_dict())
    with torch.inference_mode():
        np.testing.assert_allclose(layer(x).numpy(), _oracle(other, x), rtol=1e-4, atol=1e-4)


def test_threaded_and_single_threaded_row_blocks_match_the_oracle(monkeypatch):
    """Blocks of 4 rows, pocketfft threaded from 4 rows: 10 rows run as two threaded blocks and a serial one."""
    n = 512
    monkeypatch.setattr(threads, "ROW_BLOCK_ELEMENTS", 4 * n)
    monkeypatch.setattr(threads, "POCKETFFT_THREADED_ELEMENTS", 4 * n)
    assert len(threads.row_blocks(10, n)) == 3
    layer = _scrambled(n, 6, True, "relu")
    x = torch.randn(10, n)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            y = layer(x)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_allclose(y.numpy(), _oracle(layer, x), rtol=1e-4, atol=1e-4)
