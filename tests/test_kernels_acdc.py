"""Fused ACDC Triton kernels vs the torch reference (CPU: Triton interpreter; GPU: marked ``cuda``)."""

import os

import torch

from tests.backends import assert_backends_agree

if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated; surgeon.kernels.ensure_mode() re-decorates if needed.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.fft  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

from surgeon.errors import KernelFallbackWarning  # noqa: E402
from surgeon.kernels import ensure_mode  # noqa: E402
from surgeon.layers.acdc import ACDCLinear  # noqa: E402
from surgeon.ops.acdc import RecomputingCascade, acdc_cascade_ref  # noqa: E402
from surgeon.ops.dispatch import acdc_cascade, acdc_factor, resolve_backend  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not (INTERP or torch.cuda.is_available()),
                                   reason="needs CUDA or TRITON_INTERPRET=1")
cuda = pytest.mark.cuda
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (dtype, atol, rtol) against the fp32 reference on the same (rounded) inputs. On a GPU the 16-bit paths multiply in
# TF32, whose ~1e-3 errors can flip a ReLU sitting at its kink; the precision tests use a smooth activation.
TOLERANCES = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 3e-2), (torch.float16, 5e-3, 5e-3)]


def _problem(n, depth, lead, perm=True, bias=True, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=gen)
    a, d = 1 + 0.1 * torch.randn(2, depth, n, generator=gen)
    b = 0.1 * torch.randn(depth, n, generator=gen) if bias else None
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(depth - 1)]) if perm and depth > 1 else None
    cast = [t if t is None else t.to(device, dtype) for t in (x, a, d, b)]
    return (*cast, None if perms is None else perms.to(device))


def _staged_cascade(x, a, d, b, perms, act):
    """The staged kernels forced at any N (by default they take only N = 16384)."""
    kernels = ensure_mode()[0]
    rows = x.reshape(-1, x.shape[-1])
    y = RecomputingCascade.apply(rows, a, d, b, perms, act,
                                 functools.partial(kernels.acdc_cascade_forward, staged=True),
                                 functools.partial(kernels.acdc_cascade_backward, staged=True))
    return y.reshape(x.shape)


def _run(backend, x, a, d, b, perms, act, grad):
    leaves = [t.detach().requires_grad_(True) for t in (x, a, d, b) if t is not None]
    it = iter(leaves)
    xl, al, dl = next(it), next(it), next(it)
    bl = next(it) if b is not None else None
    if backend == "ref":
        y = acdc_cascade_ref(xl, al, dl, bl, perms, act)
    elif backend == "staged":
        y = _staged_cascade(xl, al, dl, bl, perms, act)
    else:
        y = acdc_cascade(xl, al, dl, bl, perms, act, backend=backend)
    grads = torch.autograd.grad(y, leaves, grad)
    return y.detach(), grads


def _compare(n, depth, lead, perm, act, bias, dtype=torch.float32, atol=2e-5, rtol=1e-4, device="cpu",
             engine="triton"):
    x, a, d, b, perms = _problem(n, depth, lead, perm, bias, dtype, device)
    grad = torch.randn(*lead, n, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    y, grads = _run(engine, x, a, d, b, perms, act, grad)
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
def test_dtypes(n, dtype, atol, rtol, tf32_dots):
    _compare(n, 2, (5,), True, "tanh", True, dtype=dtype, atol=atol, rtol=rtol)


def test_a_kernel_without_room_runs_on_torch_after_one_warning():
    from surgeon.ops import dispatch

    x = torch.zeros(2, 64)
    attempts = []

    def no_room(acdc, fastfood):
        attempts.append(1)
        raise OutOfResources(required=300_000, limit=101_376, name="shared memory")

    with pytest.warns(KernelFallbackWarning, match="N=64"):
        assert dispatch._on_kernels("probe", x, no_room) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch._on_kernels("probe", x, no_room) is None  # remembered: no second try, no second warning
    assert len(attempts) == 1
    dispatch._NO_ROOM.clear()


STAGED_CASES = [  # n, depth, lead shape, permute, activation, bias: N = R·C with 1, 1 and 2 slabs a side
    (256, 3, (3,), True, "relu", True),
    (1024, 2, (2, 2), True, "tanh", False),
    (4096, 3, (2,), True, "sigmoid", True),
    (4096, 1, (1,), False, "none", True),
]


@needs_kernels
@pytest.mark.parametrize("n,depth,lead,perm,act,bias", STAGED_CASES)
def test_staged_cascade_matches_reference(n, depth, lead, perm, act, bias):
    _compare(n, depth, lead, perm, act, bias, engine="staged")


@needs_kernels
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES[1:])
def test_staged_reduced_precision(dtype, atol, rtol, tf32_dots):
    _compare(256, 2, (5,), True, "tanh", True, dtype=dtype, atol=atol, rtol=rtol, engine="staged")


@needs_kernels
def test_largest_size_takes_the_staged_kernels():
    # N = 16384: the register-tile kernel would need more shared memory than any GPU gives a block.
    _compare(16384, 2, (2,), True, "relu", True, atol=3e-5)


def test_no_room_falls_back_to_the_staged_kernel_once():
    kernels = ensure_mode()[0]
    x = torch.zeros(2, 512)
    calls = []

    def tiles():
        calls.append("tiles")
        raise OutOfResources(required=300_000, limit=232_448, name="shared memory")

    kernels._launch("fwd", x, None, tiles, lambda: calls.append("staged"))
    kernels._launch("fwd", x, None, tiles, lambda: calls.append("staged"))
    assert calls == ["tiles", "staged", "staged"]  # the device's answer is remembered
    with pytest.raises(OutOfResources):  # forbidding the staged kernel surfaces the error
        kernels._launch("bwd", x, False, tiles, lambda: calls.append("staged"))
    kernels._NO_ROOM.clear()


@needs_kernels
@pytest.mark.skipif(not INTERP, reason="emulates GPU arithmetic in the interpreter")
def test_tf32_emulation_touches_only_16_bit_paths(tf32_dots, monkeypatch):
    x, a, d, b, _ = _problem(64, 1, (16,))
    kernels = ensure_mode()[0]

    def outputs():
        return [kernels.acdc_cascade_forward(x.to(dtype), a, d, b, None, "none") for dtype in (torch.float32,
                                                                                               torch.float16)]

    emulated = outputs()
    monkeypatch.undo()
    exact = outputs()
    assert torch.equal(emulated[0], exact[0])  # fp32 I/O multiplies in IEEE fp32 on the GPU too
    assert not torch.equal(emulated[1], exact[1])
    torch.testing.assert_close(emulated[1], exact[1], atol=5e-3, rtol=5e-3)


@needs_kernels
@pytest.mark.parametrize("n", [64, 512, 4096])
def test_fp32_in_three_tf32_products_keeps_fp32_accuracy(n, tf32_dots, monkeypatch):
    monkeypatch.setenv("SURGEON_FP32_DOT", "tf32x3")
    _compare(n, 2, (3,), True, "tanh", True)


def test_fp32_dot_setting_is_checked(monkeypatch):
    monkeypatch.setenv("SURGEON_FP32_DOT", "fast")
    x, a, d, b, perms = _problem(64, 2, (2,))
    with pytest.raises(ValueError, match="SURGEON_FP32_DOT"):
        ensure_mode()[0].acdc_cascade_forward(x, a, d, b, perms, "relu")


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
    _compare(n, 2, (33,), True, "tanh", True, dtype=dtype, atol=atol, rtol=rtol, device="cuda")


@cuda
@skip_no_cuda
@pytest.mark.parametrize("n,depth,lead,perm,act,bias", STAGED_CASES)
def test_cuda_staged_cascade(n, depth, lead, perm, act, bias):
    _compare(n, depth, lead, perm, act, bias, device="cuda", engine="staged")


@cuda
@skip_no_cuda
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
def test_cuda_largest_size(dtype, atol, rtol):
    _compare(16384, 3, (67,), True, "tanh", True, dtype=dtype, atol=atol * 2, rtol=rtol, device="cuda")

