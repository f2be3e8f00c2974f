"""Fused Fastfood Triton kernels vs the torch reference (CPU: Triton interpreter; GPU: marked ``cuda``)."""

import os

import torch

from tests.backends import assert_backends_agree

if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated; surgeon.kernels.ensure_mode() re-decorates if needed.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402

from surgeon.layers.fastfood import FastfoodLinear  # noqa: E402
from surgeon.ops.dispatch import fastfood  # noqa: E402
from surgeon.ops.fastfood import fastfood_ref  # noqa: E402

needs_kernels = pytest.mark.skipif(not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()),
                                   reason="needs CUDA or TRITON_INTERPRET=1")
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOLERANCES = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 3e-2), (torch.float16, 5e-3, 5e-3)]


def _problem(n, blocks, lead, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=gen)
    s, g = torch.randn(2, blocks, n, generator=gen)
    b = torch.randint(0, 2, (blocks, n), generator=gen).float() * 2 - 1
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(blocks)])
    return x, s, g, b, perm


def _grads(fn, tensors, perm, grad):
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    y = fn(*leaves, perm)
    return y.detach(), torch.autograd.grad(y, leaves, grad)


def _compare(n, blocks, lead, dtype=torch.float32, atol=2e-5, rtol=1e-4, device="cpu"):
    x, s, g, b, perm = _problem(n, blocks, lead)
    tensors = [t.to(device, dtype) for t in (x, s, g, b)]
    grad = torch.randn(*lead, blocks * n, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    y, grads = _grads(lambda *a: fastfood(*a, backend="triton"), tensors, perm.to(device), grad)
    y_ref, grads_ref = _grads(fastfood_ref, [t.float() for t in tensors], perm.to(device), grad.float())
    assert y.dtype == dtype and y.shape == (*lead, blocks * n)
    torch.testing.assert_close(y.float(), y_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float(), want, atol=atol * scale, rtol=rtol)


@needs_kernels
@pytest.mark.parametrize("n,blocks,lead", [(64, 1, (3,)), (64, 3, (17,)), (256, 2, (2, 3)), (1024, 2, (1,)),
                                           (4096, 1, (2,))])
def test_matches_reference(n, blocks, lead):
    _compare(n, blocks, lead)


@needs_kernels
@pytest.mark.parametrize("n", [64, 1024])
def test_fp32_in_three_tf32_products_keeps_fp32_accuracy(n, tf32_dots, monkeypatch):
    monkeypatch.setenv("SURGEON_FP32_DOT", "tf32x3")
    _compare(n, 2, (3,))


@needs_kernels
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("n", [64, 512])
def test_dtypes(n, dtype, atol, rtol, tf32_dots):
    _compare(n, 2, (5,), dtype=dtype, atol=atol, rtol=rtol)


@needs_kernels
@pytest.mark.parametrize("n", [64, 256])
def test_against_scipy_hadamard_oracle(n):
    x, s, g, b, perm = _problem(n, 2, (4,))
    h = scipy.linalg.hadamard(n) / np.sqrt(n)
    want = []
    for k in range(2):
        u = (x.double().numpy() * b[k].double().numpy()) @ h
        want.append(((u[:, perm[k].numpy()] * g[k].double().numpy()) @ h) * s[k].double().numpy())
    got = fastfood(x, s, g, b, perm, backend="triton")
    np.testing.assert_allclose(got.double().numpy(), np.concatenate(want, -1), atol=3e-5, rtol=1e-4)


@needs_kernels
def test_layer_dispatch_with_padding():
    layer = FastfoodLinear(100, 300, seed=3)  # d = 128, 3 blocks, output truncated
    x = torch.randn(2, 3, 100, requires_grad=True)
    assert_backends_agree(layer, x)


def test_compile_fullgraph():
    layer = FastfoodLinear(64, 100, seed=5)
    x = torch.randn(4, 64, requires_grad=True)
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    torch.testing.assert_close(y, layer(x))
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0


@pytest.mark.cuda
@skip_no_cuda
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("n", [64, 1024, 16384])
def test_cuda_matches_reference(n, dtype, atol, rtol):
    _compare(n, 2, (33,), dtype=dtype, atol=atol, rtol=rtol, device="cuda")
