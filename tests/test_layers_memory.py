"""Saved-for-backward memory of a deep ACDC cascade (SPEC §2: ≤ 3·B·N floats, vs ~36·B·N naive)."""

import torch

from surgeon import ACDCLinear


def _saved_elements(module, x):
    """Elements of every non-parameter tensor autograd keeps for backward during one forward."""
    params = {p.data_ptr() for p in module.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    return sum(saved), y


def test_depth12_cascade_saves_at_most_three_rows_per_example():
    batch, n = 32, 256
    layer = ACDCLinear(n, n, depth=12)
    saved, y = _saved_elements(layer, torch.randn(batch, n, requires_grad=True))
    assert saved <= 3 * batch * n, f"saved {saved / (batch * n):.1f}·B·N floats"
    y.sum().backward()  # recomputation path still yields gradients
    assert layer.a.grad is not None and torch.isfinite(layer.a.grad).all()


def test_padding_and_truncation_do_not_add_saved_rows():
    batch = 16
    layer = ACDCLinear(100, 300, depth=12)
    saved, _ = _saved_elements(layer, torch.randn(batch, 100, requires_grad=True))
    assert saved <= 3 * batch * layer.size


def test_naive_autograd_would_save_an_order_of_magnitude_more():
    """The oracle: the same cascade written with plain differentiable torch ops keeps ~K·several rows."""
    from surgeon.ops.dct import dct, idct

    batch, n, depth = 8, 64, 12
    layer = ACDCLinear(n, n, depth=depth)
    x = torch.randn(batch, n, requires_grad=True)
    params = {p.data_ptr() for p in layer.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = x
        for k in range(depth):
            h = idct(dct(h * layer.a[k], engine="torch") * layer.d[k] + layer.b[k], engine="torch")
            if k < depth - 1:
                h = torch.relu(h)[:, layer.perms[k]]
    assert sum(saved) > 12 * batch * n


def _dense_cascade_oracle(layer, x):
    """The cascade written from eq. 3.24 with dense DCT matrices built by hand (scipy-free, autograd-only)."""
    import math

    n = layer.size
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    z = torch.nn.functional.pad(x, (0, n - layer.in_features))
    for f in range(layer.depth):
        y = ((z * layer.a[f]) @ c.T * layer.d[f] + layer.b[f]) @ c
        if f < layer.depth - 1:
            z = torch.relu(y)[:, layer.perms[f]]
    return y[:, : layer.out_features]


def test_recompute_false_keeps_the_gradients_and_saves_2k_minus_1_more_rows():
    from surgeon import report

    batch, depth = 6, 4
    saving = ACDCLinear(40, 24, depth=depth, seed=3, dtype=torch.float64, recompute=False)
    x = torch.randn(batch, 40, dtype=torch.float64, requires_grad=True)
    params = [x, saving.a, saving.d, saving.b]
    expected = torch.autograd.grad(_dense_cascade_oracle(saving, x).square().sum(), params)
    y = saving(x)
    got = torch.autograd.grad(y.square().sum(), params, retain_graph=True)
    again = torch.autograd.grad(y.square().sum(), params)  # the saved tensors survive a first backward
    for e, g, h in zip(expected, got, again):
        torch.testing.assert_close(g, e)
        assert torch.equal(g, h)
    default = ACDCLinear(40, 24, depth=depth, seed=3, dtype=torch.float64)
    inputs = torch.randn(batch, 40, dtype=torch.float64, requires_grad=True)
    extra = report(saving, example_inputs=inputs).total.activation_bytes - \
        report(default, example_inputs=inputs).total.activation_bytes
    assert extra == (2 * depth - 1) * batch * saving.size * 8
    with torch.no_grad():  # inference keeps nothing either way
        assert _saved_elements(saving, torch.randn(batch, 40, dtype=torch.float64))[0] == 0
