"""The small-N cascade through dense factor matrices, against eq. 3.24 written with scipy's DCT matrix."""

import numpy as np
import pytest
import scipy.fft
import torch

from surgeon import ACDCLinear
from surgeon.ops import dense_cascade
from surgeon.ops.dense_cascade import dense_cascade_pays, dense_matrices
from surgeon.ops.dispatch import acdc_cascade

ACTS = ["relu", "none", "tanh", "leaky_relu", "sigmoid"]


def _act(name, y):
    return {"relu": lambda v: np.maximum(v, 0), "none": lambda v: v, "tanh": np.tanh,
            "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[name](y)


def _oracle(x, a, d, b, perms, activation):
    """Eq. 3.24 factor by factor in float64 with C = scipy's orthonormal DCT-II of the identity."""
    n = x.shape[-1]
    c = scipy.fft.dct(np.eye(n), norm="ortho", axis=0)
    z = x.double().numpy()
    a, d = a.double().numpy(), d.double().numpy()
    b = None if b is None else b.double().numpy()
    for k in range(a.shape[0]):
        y = ((z * a[k]) @ c.T * d[k] + (0 if b is None else b[k])) @ c
        if k < a.shape[0] - 1:
            z = _act(activation, y)
            z = z if perms is None else z[:, perms[k].numpy()]
    return y


def _params(n, depth, bias, permute, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = (1 + 0.3 * torch.randn(depth, n, generator=g, dtype=torch.float64)).to(dtype)
    d = (1 + 0.3 * torch.randn(depth, n, generator=g, dtype=torch.float64)).to(dtype)
    b = (0.1 * torch.randn(depth, n, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(depth - 1)]) if permute and depth > 1 else None
    return a, d, b, perms


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("n,rows", [(1, 3), (5, 1), (32, 7), (64, 1), (96, 120), (128, 200)])
@pytest.mark.parametrize("bias,permute", [(True, True), (False, False), (True, False)])
def test_dense_cascade_matches_eq_324(n, rows, activation, bias, permute):
    assert dense_cascade_pays(n, rows), "these sizes must take the dense path"
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        a, d, b, perms = _params(n, 6, bias, permute, seed=n + rows, dtype=dtype)
        x = torch.randn(rows, n, dtype=dtype)
        got = acdc_cascade(x, a, d, b, perms, activation, backend="torch")
        want = _oracle(x, a, d, b, perms, activation)
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), want, atol=tol * max(1.0, np.abs(want).max()), rtol=0)


def test_linear_cascade_collapses_to_one_matrix():
    a, d, b, perms = _params(48, 12, True, True)
    matrices = dense_matrices(a, d, b, perms, "none", rows=4)
    assert len(matrices[0]) == 1 and len(matrices[1]) == 1
    assert len(dense_matrices(a, d, b, perms, "relu", rows=4)[0]) == 12


def test_rule_keeps_large_or_unpaid_sizes_on_the_transform_path():
    assert not dense_cascade_pays(512, 10**6)
    assert not dense_cascade_pays(256, 10**6, reused=True)
    assert not dense_cascade_pays(128, 8) and dense_cascade_pays(128, 128)
    assert dense_cascade_pays(64, 1) and not dense_cascade_pays(128, 1)
    a, d, b, perms = _params(128, 3, True, True)
    assert dense_matrices(a, d, b, perms, "relu", rows=1) is None


def test_cache_sees_every_kind_of_in_place_edit():
    layer = ACDCLinear(40, 40, depth=4, seed=2, init_std=0.3).eval()
    x = torch.randn(5, 40)

    def check() -> torch.Tensor:
        with torch.no_grad():
            got = layer(x)
        want = _oracle(x, layer.a.detach(), layer.d.detach(), layer.b.detach(), layer.perms, "relu")
        np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
        return got

    first = check()
    with torch.no_grad():
        assert torch.equal(layer(x), first), "a cached call rounds like the call that built it"
    layer.d.data[1].mul_(-1.0)            # .data edits do not bump the version counter
    check()
    layer.load_state_dict({**layer.state_dict(), "b": torch.full_like(layer.b, 0.2)})
    check()
    with torch.no_grad():
        layer.a.add_(0.5)
    check()


def test_cache_entry_leaves_with_its_layer():
    before = len(dense_cascade._CACHE)
    layer = ACDCLinear(24, 24, depth=3)
    with torch.no_grad():
        layer(torch.randn(2, 24))
    assert len(dense_cascade._CACHE) == before + 1
    del layer
    assert len(dense_cascade._CACHE) == before


def test_forced_scipy_engine_skips_the_dense_path(monkeypatch):
    a, d, b, perms = _params(32, 4, True, True)
    monkeypatch.setenv("SURGEON_DCT_ENGINE", "scipy")
    assert dense_matrices(a, d, b, perms, "relu", rows=8) is None
    x = torch.randn(8, 32, dtype=torch.float64)
    want = _oracle(x, a.double(), d.double(), b.double(), perms, "relu")
    got = acdc_cascade(x, a.double(), d.double(), b.double(), perms, "relu", backend="torch")
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


@pytest.mark.parametrize("recompute", [True, False])
def test_gradients_of_a_small_layer(recompute):
    """Forward on the dense path, backward on the transform path: gradcheck in float64."""
    layer = ACDCLinear(12, 16, depth=3, seed=1, dtype=torch.float64, recompute=recompute, activation="tanh")
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a, d, b: acdc_cascade(t if t.shape[-1] == 16 else
                                                                    torch.nn.functional.pad(t, (0, 4)),
                                                                    a, d, b, layer.perms, "tanh",
                                                                    recompute=recompute),
                                    (x, layer.a, layer.d, layer.b))


def test_a_trace_under_no_grad_keeps_the_op_and_follows_the_parameters():
    """Python-side choices (the dense path, its cache) are never baked into a traced graph."""
    layer = ACDCLinear(32, 32, depth=3, seed=4).eval()
    x = torch.randn(4, 32)
    with torch.no_grad(), pytest.warns(Warning):
        traced = torch.jit.trace(layer, x)
    assert any(node.kind() == "surgeon::acdc_cascade" for node in traced.graph.nodes())
    with torch.no_grad():
        layer.a.add_(0.5)
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-5, atol=1e-6)
