"""FastfoodLinear against a dense product built from scipy's Hadamard matrix (thesis eq. 3.9)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from surgeon import FastfoodLinear


def _dense_fastfood(layer: FastfoodLinear, x: np.ndarray) -> np.ndarray:
    d = layer.d
    h = scipy.linalg.hadamard(d) / math.sqrt(d)
    xp = np.pad(x, [(0, 0), (0, d - layer.in_features)])
    outs = []
    for k in range(layer.blocks):
        s, g, b = (t[k].detach().double().numpy() for t in (layer.scale, layer.gauss, layer.binary))
        perm_matrix = np.eye(d)[layer.perm[k].numpy()]  # (Π v)[i] = v[perm[i]]
        v = np.diag(s) @ h @ np.diag(g) @ perm_matrix @ h @ np.diag(b)
        outs.append(xp @ v.T)
    y = np.concatenate(outs, -1)[:, : layer.out_features]
    return y if layer.bias is None else y + layer.bias.detach().double().numpy()


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (8, 3), (16, 16), (33, 70), (100, 300)])
@pytest.mark.parametrize("adaptive", [True, False])
def test_matches_dense_product(shape, adaptive):
    layer = FastfoodLinear(*shape, adaptive=adaptive, seed=4, dtype=torch.float64)
    if layer.bias is not None:
        nn.init.normal_(layer.bias)
    x = torch.randn(5, shape[0], dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), _dense_fastfood(layer, x.numpy()), atol=1e-10)
    torch.testing.assert_close(layer.to_dense()(x), layer(x))


def test_blocks_and_parameter_budget():
    layer = FastfoodLinear(100, 300)
    assert (layer.d, layer.blocks) == (128, 3)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 3 * 128 + 300
    fixed = FastfoodLinear(100, 300, adaptive=False)
    assert sum(p.numel() for p in fixed.parameters()) == 300
    assert {"scale", "gauss", "binary", "perm"} <= set(fixed.state_dict())


def test_random_fastfood_rows_have_unit_norm_on_average():
    """Le et al.'s draw (S ~ chi(d)/‖G‖) makes V look like a Gaussian matrix with N(0, 1/d) entries."""
    layer = FastfoodLinear(1024, 1024, adaptive=False, bias=False, seed=0, dtype=torch.float64)
    w = layer.to_dense().weight
    assert abs(w.norm(dim=1).pow(2).mean().item() - 1) < 0.05
    assert abs(w.std().item() * math.sqrt(1024) - 1) < 0.05
    assert set(layer.binary.unique().tolist()) == {-1.0, 1.0}


def test_gradcheck_every_parameter():
    layer = FastfoodLinear(6, 20, seed=1, dtype=torch.float64)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    names = ["scale", "gauss", "binary", "bias"]
    params = [getattr(layer, n) for n in names]
    assert torch.autograd.gradcheck(
        lambda x, *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x,)), (x, *params))


def test_seed_reproducible_and_from_linear():
    a, b = FastfoodLinear(50, 60, seed=9), FastfoodLinear(50, 60, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    lin = nn.Linear(50, 20).double()
    ff = FastfoodLinear.from_linear(lin)
    assert ff.scale.dtype == torch.float64 and ff(torch.randn(2, 50, dtype=torch.float64)).shape == (2, 20)
    assert "blocks=1" in repr(ff) and "adaptive=True" in repr(ff)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reduced_precision(dtype):
    layer = FastfoodLinear(64, 40, seed=2)
    x = torch.randn(3, 64)
    ref = layer(x).detach()
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
    # A spike at the top of fp16's range: the transform's internals must not overflow where the result fits.
    spike = torch.zeros(1, 64, dtype=dtype)
    spike[0, 3] = 6e4
    assert torch.isfinite(layer(spike)).all()


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("rows_per_block", [3, None])
def test_inference_forward_and_after_a_permutation_update(mode, rows_per_block, monkeypatch):
    """The autograd-free forward (eager CPU inference skips the custom op and runs row blocks into the output with
    a cached int32 permutation) against the dense product, with stacked Fastfood blocks, over several row blocks
    with a partial last one or one block, and again after the permutation buffer is changed in place and after
    it is re-pointed with ``.data`` (the cached index must follow both)."""
    import surgeon.ops.threads as threads

    layer = FastfoodLinear(100, 300, seed=2, dtype=torch.float64)
    if rows_per_block is not None:
        monkeypatch.setattr(threads, "ROW_BLOCK_ELEMENTS", rows_per_block * layer.blocks * layer.d)
    nn.init.normal_(layer.bias)
    x = torch.randn(10, 100, dtype=torch.float64)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        np.testing.assert_allclose(layer(x).numpy(), _dense_fastfood(layer, x.numpy()), atol=1e-10)
    with torch.no_grad():
        layer.perm[1] = layer.perm[1].flip(0)
    with context():
        np.testing.assert_allclose(layer(x).numpy(), _dense_fastfood(layer, x.numpy()), atol=1e-10)
    layer.perm.data = torch.stack([torch.randperm(layer.d) for _ in range(layer.blocks)])
    with context():
        np.testing.assert_allclose(layer(x).numpy(), _dense_fastfood(layer, x.numpy()), atol=1e-10)


def test_square_layer_bias_added_in_place_only_without_autograd():
    """Without autograd the bias goes into the op's fresh output (a square layer); with it, the sum is a new
    tensor whose gradients reach the bias and the input. Outputs against the scipy-built dense product; gradients
    against an ``nn.Linear`` holding that product's matrix. A float32 input to a float64 layer still comes out
    float64 in both modes (the in-place add would have kept the input's dtype)."""
    layer = FastfoodLinear(64, 64, seed=3, dtype=torch.float64)
    nn.init.normal_(layer.bias)
    x = torch.randn(4, 64, dtype=torch.float64, requires_grad=True)
    want = torch.from_numpy(_dense_fastfood(layer, x.detach().numpy()))
    y = layer(x)
    torch.testing.assert_close(y, want)
    y.square().sum().backward()
    dense = nn.Linear(64, 64, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(_dense_fastfood(layer, np.eye(64)) - layer.bias.detach().numpy()).T)
        dense.bias.copy_(layer.bias)
    want_x, want_bias = torch.autograd.grad(dense(x).square().sum(), (x, dense.bias))
    torch.testing.assert_close(x.grad, want_x)
    torch.testing.assert_close(layer.bias.grad, want_bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want)
        single = layer(x.float())
    assert single.dtype == layer(x.float()).dtype == torch.float64
    torch.testing.assert_close(single, want, rtol=1e-6, atol=1e-6)
