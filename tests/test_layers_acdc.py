"""ACDCLinear against hand-built dense products of the thesis formula (eqs. 3.24–3.27)."""

import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from surgeon import ACDCLinear
from surgeon.ops.acdc import acdc_factor_ref


def _dense_cascade(layer: ACDCLinear, x: np.ndarray) -> np.ndarray:
    """y = IDCT(DCT(x ⊙ a) ⊙ d + b) per factor with scipy's DCT, activation and permutation between factors."""
    n = layer.size
    h = np.pad(x, [(0, 0), (0, n - layer.in_features)])
    a, d = layer.a.detach().double().numpy(), layer.d.detach().double().numpy()
    b = np.zeros_like(a) if layer.b is None else layer.b.detach().double().numpy()
    for k in range(layer.depth):
        h = scipy.fft.idct(scipy.fft.dct(h * a[k], norm="ortho", axis=-1) * d[k] + b[k], norm="ortho", axis=-1)
        if k < layer.depth - 1:
            if layer.activation == "relu":
                h = np.maximum(h, 0)
            elif layer.activation == "tanh":
                h = np.tanh(h)
            if layer.perms is not None:
                h = h[:, layer.perms[k].numpy()]
    return h[:, : layer.out_features]


def _randomise(layer: nn.Module) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(1.0, 0.5)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (8, 3), (64, 64), (100, 37), (33, 70)])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_matches_hand_built_cascade(shape, activation):
    layer = ACDCLinear(*shape, depth=4, activation=activation, seed=3, dtype=torch.float64)
    _randomise(layer)
    x = torch.randn(6, shape[0], dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), _dense_cascade(layer, x.numpy()), atol=1e-10)


def test_single_factor_is_eq_3_24_matrix_product():
    n = 16
    a, d, b = torch.randn(3, n, dtype=torch.float64)
    c = torch.from_numpy(scipy.fft.dct(np.eye(n), norm="ortho", axis=0))  # columns = DCT of basis vectors
    x = torch.randn(5, n, dtype=torch.float64)
    want = ((x * a) @ c.T * d + b) @ c
    torch.testing.assert_close(acdc_factor_ref(x, a, d, b), want)


@pytest.mark.parametrize("shape", [(9, 9), (20, 6), (6, 20)])
def test_to_dense_is_identical(shape):
    layer = ACDCLinear(*shape, depth=5, activation=None, dtype=torch.float64)
    _randomise(layer)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Linear) and dense.weight.shape == (shape[1], shape[0])
    x = torch.randn(4, 3, shape[0], dtype=torch.float64)
    torch.testing.assert_close(dense(x), layer(x), atol=1e-12, rtol=1e-10)


def test_to_dense_refuses_nonlinear_cascade():
    with pytest.raises(ValueError, match="activation=None"):
        ACDCLinear(8, 8, depth=2).to_dense()


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_inputs_and_every_parameter(activation, bias):
    layer = ACDCLinear(7, 5, depth=3, activation=activation, bias=bias, seed=0, dtype=torch.float64)
    _randomise(layer)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    params = [p for p in (layer.a, layer.d, layer.b) if p is not None]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(("a", "d", "b"), ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_init_identity_plus_noise_and_seeded_permutations():
    layer = ACDCLinear(512, 512, depth=6, init_std=0.1, seed=11)
    for p in (layer.a, layer.d):
        assert abs(p.mean().item() - 1) < 0.01 and abs(p.std().item() - 0.1) < 0.01
    assert torch.count_nonzero(layer.b) == 0
    assert layer.perms.shape == (5, 512)
    assert all(torch.equal(torch.sort(p).values, torch.arange(512)) for p in layer.perms)
    twin = ACDCLinear(512, 512, depth=6, seed=11)
    assert torch.equal(twin.perms, layer.perms) and torch.equal(twin.a, layer.a)
    assert not torch.equal(ACDCLinear(512, 512, depth=6, seed=12).perms, layer.perms)
    assert "perms" in layer.state_dict()


def test_parameter_count_and_no_permutation_option():
    layer = ACDCLinear(4096, 1000, depth=12, bias=True)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 12 * 4096
    assert ACDCLinear(10, 10, depth=3, permute=False).perms is None
    assert ACDCLinear(10, 10, depth=1).perms is None


def test_from_linear_keeps_dtype_and_shape():
    lin = nn.Linear(30, 12, bias=False).double()
    layer = ACDCLinear.from_linear(lin, depth=2)
    assert layer.a.dtype == torch.float64 and layer.b is None
    assert layer(torch.randn(4, 30, dtype=torch.float64)).shape == (4, 12)
    assert "depth=2" in repr(layer) and "N=30" in repr(layer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_forward_backward(dtype):
    layer = ACDCLinear(64, 48, depth=4, seed=1)
    ref = layer(torch.ones(1, 64)).detach()
    layer = layer.to(dtype)
    x = torch.ones(3, 64, dtype=dtype, requires_grad=True)
    y = layer(x)
    y.float().sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype and layer.a.grad.dtype == dtype
    tol = {torch.float16: 2e-2, torch.bfloat16: 8e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(y[0].float(), ref[0], atol=tol * 4, rtol=tol)


def test_extreme_inputs_stay_finite():
    layer = ACDCLinear(32, 32, depth=3, activation="tanh")
    assert torch.isfinite(layer(torch.full((2, 32), 1e30))).all()
    half = ACDCLinear(32, 32, depth=3, activation="tanh").half()
    assert torch.isfinite(half(torch.full((2, 32), 6e4, dtype=torch.float16))).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 0}, "depth"), ({"depth": -3}, "depth"), ({"depth": 10**6}, "depth"),
    ({"activation": "swish"}, "unknown activation"), ({"init_std": math.nan}, "init_std"),
])
def test_bad_arguments_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACDCLinear(8, 8, **kwargs)
    with pytest.raises(ValueError, match="in_features"):
        ACDCLinear(0, 8)
    with pytest.raises(ValueError, match="last dim 8"):
        ACDCLinear(8, 8, depth=1)(torch.randn(2, 9))


def _autograd_oracle(layer: ACDCLinear, x: torch.Tensor) -> torch.Tensor:
    """The cascade as plain differentiable torch products with the DCT matrix built from scipy (float64)."""
    n = layer.size
    c = torch.from_numpy(scipy.fft.dct(np.eye(n), norm="ortho", axis=0))
    h = x
    for k in range(layer.depth):
        h = ((h * layer.a[k]) @ c.T * layer.d[k] + layer.b[k]) @ c
        if k < layer.depth - 1:
            h = torch.relu(h)[:, layer.perms[k]]
    return h


@pytest.mark.parametrize("recompute", [True, False])
def test_row_blocks_match_the_whole_batch_oracle(monkeypatch, recompute):
    """A batch split into row blocks of 3 (the last one short) gives the oracle's output and gradients."""
    import surgeon.ops.threads as threads

    n, rows = 300, 7
    monkeypatch.setattr(threads, "ROW_BLOCK_ELEMENTS", 3 * n)
    assert len(threads.row_blocks(rows, n)) == 3
    layer = ACDCLinear(n, n, depth=3, seed=5, dtype=torch.float64, recompute=recompute)
    _randomise(layer)
    x = torch.randn(rows, n, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(rows, n, dtype=torch.float64)
    got = layer(x)
    (got * weights).sum().backward()
    got_grads = [t.grad.clone() for t in (x, layer.a, layer.d, layer.b)]
    for t in (x, layer.a, layer.d, layer.b):
        t.grad = None
    want = _autograd_oracle(layer, x)
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for mine, oracle in zip(got_grads, (x.grad, layer.a.grad, layer.d.grad, layer.b.grad)):
        torch.testing.assert_close(mine, oracle, atol=1e-9, rtol=1e-9)


def test_permutations_edited_in_place_are_followed():
    """The cascade caches its int32 permutations; an in-place edit of the buffer must reach the next call."""
    layer = ACDCLinear(300, 300, depth=3, seed=1, dtype=torch.float64)
    _randomise(layer)
    x = torch.randn(4, 300, dtype=torch.float64)
    layer(x)
    with torch.no_grad():
        layer.perms.copy_(torch.stack([torch.randperm(300) for _ in range(2)]))
    np.testing.assert_allclose(layer(x).detach().numpy(), _dense_cascade(layer, x.numpy()), atol=1e-10)
    x.requires_grad_(True)
    layer(x).sum().backward()   # the inverse permutations of the edited buffer
    probe = x.detach().requires_grad_(True)
    _autograd_oracle(layer, probe).sum().backward()
    torch.testing.assert_close(x.grad, probe.grad, atol=1e-9, rtol=1e-9)
