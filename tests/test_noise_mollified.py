"""Mollified activation ψ (thesis Algorithm 2, eqs. 4.24–4.26) against a literal numpy transcription."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from surgeon.noise import MollifiedActivation

X = np.array([-50.0, -6.0, -2.0, -1.0, -0.25, 0.0, 0.1, 0.7, 1.5, 3.0, 9.0, 60.0])


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_psi(kind, x, abs_xi, a, p, c):
    """Algorithm 2 line by line, plus the shift back by the original f(0)."""
    if kind == "sigmoid":
        f, u, shift = np_sigmoid(x) - 0.5, 0.25 * x, 0.5
    elif kind == "tanh":
        f, u, shift = np.tanh(x), x, 0.0
    else:
        f, u, shift = np.maximum(x, 0.0), x, 0.0
    delta = u - f
    sigma = (np_sigmoid(a * delta) - 0.5) ** 2
    s = p * c * sigma * abs_xi
    sgn_u = np.where(u >= 0, 1.0, -1.0)
    return sgn_u * np.minimum(np.abs(u), np.abs(f + sgn_u * np.abs(s))) + shift


def make(kind, n, a, p, c, **kw):
    m = MollifiedActivation(kind=kind, p=p, c=c, num_features=n, **kw).double()
    with torch.no_grad():
        m.a.copy_(torch.as_tensor(a, dtype=torch.float64))
    return m


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("p,c", [(0.6, 3.0), (1.0, 40.0), (0.05, 1.0)])
def test_matches_algorithm_2(kind, p, c):
    rng = np.random.default_rng(7)
    a = rng.uniform(-2, 2, X.size)
    xi = rng.standard_normal(X.size)
    m = make(kind, X.size, a, p, c)
    got = m(torch.tensor(X), noise=torch.tensor(xi)).detach().numpy()
    np.testing.assert_allclose(got, np_psi(kind, X, np.abs(xi), a, p, c), rtol=1e-12, atol=1e-12)
    # eval: |ξ| replaced by E|ξ| = sqrt(2/π); eval_noise="none" gives f
    m.eval()
    np.testing.assert_allclose(
        m(torch.tensor(X)).detach().numpy(),
        np_psi(kind, X, math.sqrt(2 / math.pi), a, p, c),
        rtol=1e-12,
        atol=1e-12,
    )
    m.eval_noise = "none"
    np.testing.assert_allclose(
        m(torch.tensor(X)).detach().numpy(), np_psi(kind, X, 0.0, a, p, c), rtol=1e-12, atol=1e-12
    )


def test_single_point_by_hand():
    # tanh, x = 2, a = 1, p·c = 2, ξ = −1.5: Δ = 2 − tanh 2 = 1.0359724, σ = (sigmoid(Δ) − 0.5)² = 0.0566783,
    # s = 2 · 0.0566783 · 1.5 = 0.1700350, ψ = min(2, 0.9640276 + 0.1700350) = 1.1340626
    m = make("tanh", 1, [1.0], 0.5, 4.0)
    out = m(torch.tensor([2.0], dtype=torch.float64), noise=torch.tensor([-1.5], dtype=torch.float64))
    assert out.item() == pytest.approx(1.1340626, abs=2e-7)


@pytest.mark.parametrize("kind,fn", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)])
def test_p_zero_is_the_original_function_exactly(kind, fn):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000) * 10, torch.tensor([-1e30, -100.0, -30.0, 0.0, 30.0, 1e30])])
    m = MollifiedActivation(kind=kind, p=0.0, c=1e6, shared=True)
    for training in (True, False):
        m.train(training)
        assert torch.equal(m(x).detach(), fn(x))
    # tiny sigmoid values for x ≪ 0 keep their relative precision (no (σ − 0.5) + 0.5 round trip)
    if kind == "sigmoid":
        assert m(torch.tensor([-60.0])).item() == pytest.approx(math.exp(-60.0), rel=1e-5)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu"])
def test_large_noise_gives_the_linearisation(kind):
    torch.manual_seed(1)
    x = torch.cat([torch.linspace(-8, -0.5, 40), torch.linspace(0.5, 8, 40)]).double()
    m = MollifiedActivation(kind=kind, p=1.0, c=1e12, shared=True).double()
    with torch.no_grad():
        m.a.fill_(1.5)
    linear = 0.25 * x.numpy() + 0.5 if kind == "sigmoid" else x.numpy()
    np.testing.assert_allclose(m(x).detach().numpy(), linear, rtol=1e-9, atol=1e-9)


def test_output_lies_between_f_and_u():
    # ψ moves f towards u by at most |Δ| (the min() of eq. 4.24 bounds the noise)
    torch.manual_seed(2)
    x = torch.randn(20_000, dtype=torch.float64) * 5
    m = MollifiedActivation(kind="sigmoid", p=0.7, c=20.0, shared=True).double()
    out = m(x).detach()
    f, u = torch.sigmoid(x), 0.25 * x + 0.5
    lo, hi = torch.minimum(f, u), torch.maximum(f, u)
    assert ((out >= lo - 1e-15) & (out <= hi + 1e-15)).all()
    assert ((out - f).abs() > 1e-6).float().mean() > 0.5  # noise is actually applied


def test_internal_noise_is_seeded():
    m = make("tanh", X.size, np.linspace(-2, 2, X.size), 0.8, 5.0)
    x = torch.tensor(X)
    torch.manual_seed(9)
    out = m(x).detach()
    torch.manual_seed(9)
    xi = torch.randn_like(x)
    np.testing.assert_allclose(
        out.numpy(),
        np_psi("tanh", X, np.abs(xi.numpy()), np.linspace(-2, 2, X.size), 0.8, 5.0),
        rtol=1e-12,
        atol=1e-12,
    )


def test_lazy_units_init_buffers_and_config():
    m = MollifiedActivation(kind="relu", unit_dim=1)
    m(torch.randn(2, 5, 3, 3))
    assert m.a.shape == (5,)
    big = MollifiedActivation(num_features=10_000)
    assert (
        big.a.min() >= -2
        and big.a.max() <= 2
        and big.a.std().item() == pytest.approx(2 / math.sqrt(3), rel=0.05)
    )
    m.set_noise_level(0.25)
    m.p = 0.5  # plain float assignment updates the buffer
    m.set_noise_scale(7.0)
    sd = m.state_dict()
    assert sd["p"].item() == 0.5 and sd["c"].item() == 7.0 and sd["a"].shape == (5,)
    cfg = json.loads(json.dumps(m.config()))
    clone = MollifiedActivation(**cfg)
    clone.load_state_dict(sd)
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(clone.eval()(x), m.eval()(x))
    assert MollifiedActivation.from_torch(nn.Tanh()).kind == "tanh"
    assert MollifiedActivation.from_torch(nn.ReLU()).kind == "relu"
    with pytest.raises(TypeError):
        MollifiedActivation.from_torch(nn.GELU())
    with pytest.raises(ValueError):
        m.set_noise_level(1.5)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu"])
def test_extreme_inputs_and_gradients(kind):
    torch.manual_seed(3)
    m = MollifiedActivation(kind=kind, p=1.0, c=100.0, num_features=6)
    for training in (True, False):
        m.train(training)
        assert torch.isfinite(m(torch.tensor([-1e30, -1e4, -1.0, 0.5, 1e4, 1e30]))).all()
        x16 = torch.tensor([-6e4, -100.0, -1.0, 0.5, 100.0, 6e4], dtype=torch.float16)
        assert m(x16).dtype == torch.float16 and torch.isfinite(m(x16)).all()
        assert torch.isfinite(m(x16.to(torch.bfloat16))).all()
        yn = m(torch.tensor([float("nan"), 1.0, -5.0, float("nan"), 0.0, 3.0]))
        assert torch.isnan(yn[[0, 3]]).all() and torch.isfinite(yn[[1, 2, 4, 5]]).all()
    m.train()
    x = torch.linspace(-5, 5, 6, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all() and m.a.grad is not None
