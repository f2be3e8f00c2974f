"""Fused ACDC Triton kernels vs the torch reference (CPU: Triton interpreter; GPU: marked ``cuda``)."""

import os

import torch

from tests.backends import assert_backends_agree

if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated; surgeon.kernels.ensure_mode() re-decorates if needed.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.fft  # noqa: E402

from surgeon.layers.acdc import ACDCLinear  # noqa: E402
from surgeon.ops.acdc import acdc_cascade_ref  # noqa: E402
from surgeon.ops.dispatch import acdc_cascade, acdc_factor, resolve_backend  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not (INTERP or torch.cuda.is_available()),
                                   reason="needs CUDA or TRITON_INTERPRET=1")
cuda = pytest.mark.cuda
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (dtype, atol, rtol) against the fp32 reference on the same (rounded) inputs.
TOLERANCES = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 3e-2), (torch.float16, 5e-3, 5e-3)]


def _problem(n, depth, lead, perm=True, bias=True, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=gen)
    a, d = 1 + 0.1 * torch.randn(2, depth, n, generator=gen)
    b = 0.1 * torch.randn(depth, n, generator=gen) if bias else None
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(depth - 1)]) if perm and depth > 1 else None
    cast = [t if t is None else t.to(device, dtype) for t in (x, a, d, b)]
    return (*cast, None if perms is None else perms.to(device))


def _run(backend, x, a, d, b, perms, act, grad):
    leaves = [t.detach().requires_grad_(True) for t in (x, a, d, b) if t is not None]
    it = iter(leaves)
    xl, al, dl = next(it), next(it), next(it)
    bl = next(it) if b is not None else None
    if backend == "ref":
        y = acdc_cascade_ref(xl, al, dl, bl, perms, act)
    else:
        y = acdc_cascade(xl, al, dl, bl, perms, act, backend=backend)
    grads = torch.autograd.grad(y, leaves, grad)
    return y.detach(), grads


def _compare(n, depth, lead, perm, act, bias, dtype=torch.float32, atol=2e-5, rtol=1e-4, device="cpu"):
    x, a, d, b, perms = _problem(n, depth, lead, perm, bias, dtype, device)
    grad = torch.randn(*lead, n, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    y, grads = _run("triton", x, a, d, b, perms, act, grad)
    up = [t if t is None else t.float() for t in (x, a, d, b)]
    y_ref, grads_ref = _run("ref", *up, perms, act, grad.float())
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), y_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.dtype == dtype
        # Parameter gradients sum over rows: scale the tolerance with their magnitude.
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float(), want, atol=atol * scale, rtol=rtol)


CASES = [  # n, depth, lead shape, permute, activation, bias
    (64, 1, (3,), False, "none", True),
    (64, 3, (17,), True, "relu", True),
    (128, 2, (2, 3), True, "tanh", False),
    (256, 2, (1,), True, "sigmoid", True),
    (512, 3, (3,), True, "relu", True),
    (512, 2, (2, 2), False, "leaky_relu", True),
    (1024, 2, (3,), True, "relu", False),
    (4096, 2, (2,), True, "relu", True),
]


@needs_kernels
@pytest.mark.parametrize("n,depth,lead,perm,act,bias", CASES)
def test_cascade_matches_reference(n, depth, lead, perm, act, bias):
    _compare(n, depth, lead, perm, act, bias)


@needs_kernels
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("n", [64, 512])
def test_dtypes(n, dtype, atol, rtol):
    _compare(n, 2, (5,), True, "relu", True, dtype=dtype, atol=atol, rtol=rtol)


@needs_kernels
def test_largest_size_forward():
    x, a, d, b, perms = _problem(16384, 2, (1,))
    y = acdc_cascade(x, a, d, b, perms, "relu", backend="triton")
    torch.testing.assert_close(y, acdc_cascade_ref(x, a, d, b, perms, "relu"), atol=3e-5, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize("n", [256, 64])
def test_factor_against_scipy_dense_oracle(n):
    """An independent oracle: dense products with scipy's orthonormal DCT-II matrix, gradients by eqs. 3.28–3.32."""
    gen = np.random.default_rng(3)
    x, g = gen.standard_normal((4, n)), gen.standard_normal((4, n))
    a, d, b = 1 + 0.1 * gen.standard_normal(n), 1 + 0.1 * gen.standard_normal(n), 0.1 * gen.standard_normal(n)
    c = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)  # c @ v == dct(v)
    h2 = (x * a) @ c.T
    y = (h2 * d + b) @ c
    g3 = g @ c.T
    g1 = (g3 * d) @ c
    want = {"y": y, "x": a * g1, "a": (x * g1).sum(0), "d": (h2 * g3).sum(0), "b": g3.sum(0)}
    leaves = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in
              (("x", x), ("a", a), ("d", d), ("b", b))}
    out = acdc_factor(leaves["x"], leaves["a"], leaves["d"], leaves["b"], backend="triton")
    got = dict(zip(("x", "a", "d", "b"), torch.autograd.grad(out, list(leaves.values()),
                                                            torch.tensor(g, dtype=torch.float32)), strict=True))
    got["y"] = out.detach()
    for key, value in want.items():
        np.testing.assert_allclose(got[key].double().numpy(), value, atol=3e-5, rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("n", [96, 100, 24])
def test_unsupported_sizes_fall_back(n):
    x, a, d, b, perms = _problem(n, 2, (3,))
    assert resolve_backend(x, "auto") == "torch"
    y = acdc_cascade(x, a, d, b, perms, "relu", backend="triton")  # forced, but the kernels cannot: torch path
    torch.testing.assert_close(y, acdc_cascade_ref(x, a, d, b, perms, "relu"))


def test_backend_selection(monkeypatch):
    x = torch.randn(2, 64)
    assert resolve_backend(x, "torch") == "torch"
    assert resolve_backend(x.double(), "triton") == "torch"  # fp64 is not a kernel dtype
    monkeypatch.setenv("SURGEON_BACKEND", "torch")
    assert resolve_backend(x, "auto") == "torch"
    monkeypatch.setenv("SURGEON_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend(x, "auto")
    monkeypatch.setenv("SURGEON_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend(x, "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(x, "auto") == "triton"


@needs_kernels
def test_layer_dispatch_and_padding():
    layer = ACDCLinear(100, 70, depth=3, seed=4)  # N = 128: padded input, truncated output
    x = torch.randn(2, 3, 100, requires_grad=True)
    assert_backends_agree(layer, x)


def test_compile_fullgraph_no_graph_breaks():
    layer = ACDCLinear(64, 64, depth=2, seed=5)
    x = torch.randn(4, 64, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, layer(x))
    explain = torch._dynamo.explain(layer)(x)
    assert explain.graph_break_count == 0
    if INTERP or torch.cuda.is_available():
        layer.backend = "triton"
        torch.testing.assert_close(torch.compile(layer, backend="aot_eager", fullgraph=True)(x), y,
                                   atol=1e-4, rtol=1e-4)


def test_only_the_input_is_saved():
    x, a, d, b, perms = _problem(64, 6, (8,))
    leaves = [t.requires_grad_(True) for t in (x, a, d, b)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        acdc_cascade(*leaves, perms, "relu", backend="torch")
    # x (8·64), the three (6, 64) diagonals and the (5, 64) permutations: nothing batch-sized but x.
    assert sum(saved) == 8 * 64 + 3 * 6 * 64 + 5 * 64


@cuda
@skip_no_cuda
@pytest.mark.parametrize("n,depth,lead,perm,act,bias", CASES + [(16384, 2, (3,), True, "relu", True)])
def test_cuda_cascade_matches_reference(n, depth, lead, perm, act, bias):
    _compare(n, depth, lead, perm, act, bias, device="cuda")


@cuda
@skip_no_cuda
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("n", [64, 512, 8192])
def test_cuda_dtypes(n, dtype, atol, rtol):
    _compare(n, 2, (33,), True, "relu", True, dtype=dtype, atol=atol, rtol=rtol, device="cuda")
