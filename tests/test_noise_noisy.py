"""Noisy hard activations (thesis §4.3, eqs. 4.1–4.19) against independent numpy computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from surgeon.noise import NoisyHardSigmoid, NoisyHardTanh, hard_sigmoid, hard_tanh, lin_sigmoid, sgn

# Saturated and unsaturated points of both signs, the thresholds themselves and 0.
X = np.array([-50.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.3, 0.0, 0.4, 1.0, 1.7, 2.0, 2.2, 5.0, 40.0])


def np_h(kind: str, x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(0.25 * x + 0.5, 0.0), 1.0) if kind == "sigmoid" else np.clip(x, -1.0, 1.0)


def np_u(kind: str, x: np.ndarray) -> np.ndarray:
    return 0.25 * x + 0.5 if kind == "sigmoid" else x.copy()


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_sigma(kind: str, x: np.ndarray, p: np.ndarray, c: float) -> np.ndarray:
    delta = np_h(kind, x) - np_u(kind, x)
    return c * (np_sigmoid(p * delta) - 0.5) ** 2


def np_phi_output(kind, mode, x, xi, p, c, alpha):
    """Eq. 4.15 with ε = ξ (nan) or |ξ| (nah); ξ=None gives the eq. 4.17 expectation."""
    h, u = np_h(kind, x), np_u(kind, x)
    d = -np.where(x >= 0, 1.0, -1.0) * (1.0 if 1.0 - alpha >= 0 else -1.0)
    eps_mean = 0.0 if mode == "nan" else math.sqrt(2.0 / math.pi)
    eps_sample = None if xi is None else (xi if mode == "nan" else np.abs(xi))
    eps = eps_mean if eps_sample is None else eps_sample
    return alpha * h + (1 - alpha) * u + d * np_sigma(kind, x, p, c) * eps


def make(kind, mode, n, p=None, **kw):
    cls = NoisyHardSigmoid if kind == "sigmoid" else NoisyHardTanh
    m = cls(mode=mode, num_features=n, **kw).double()
    if p is not None:
        with torch.no_grad():
            m.p.copy_(torch.as_tensor(p, dtype=torch.float64))
    return m


def test_base_functions_and_sign():
    x = torch.tensor(X)
    np.testing.assert_array_equal(hard_sigmoid(x).numpy(), np_h("sigmoid", X))
    np.testing.assert_array_equal(hard_tanh(x).numpy(), np_h("tanh", X))
    np.testing.assert_array_equal(lin_sigmoid(x).numpy(), 0.25 * X + 0.5)
    # slope 0.25, not nn.Hardsigmoid's 1/6
    assert hard_sigmoid(torch.tensor(1.0)).item() == 0.75
    assert nn.Hardsigmoid()(torch.tensor(1.0)).item() != 0.75
    # the thesis' sgn: sgn(0) = +1
    assert sgn(torch.tensor([-2.0, -0.0, 0.0, 3.0])).tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_single_point_by_hand():
    # hard-tanh NAN at x = 3, p = 1, c = 0.5, alpha = 1.15, xi = 2:
    # h = 1, u = 3, Δ = −2, σ = 0.5 (sigmoid(−2) − 0.5)² = 0.5 · 0.38079708² = 0.07250320,
    # d = −sgn(3) sgn(−0.15) = +1, φ = 1.15 − 0.45 + 2 · 0.07250320 = 0.84500640.
    m = make("tanh", "nan", 1, p=[1.0], c=0.5, alpha=1.15)
    out = m(torch.tensor([3.0], dtype=torch.float64), noise=torch.tensor([2.0], dtype=torch.float64))
    assert out.item() == pytest.approx(0.84500640, abs=1e-7)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("mode", ["nan", "nah"])
def test_output_noise_modes_match_eq_4_15_and_4_17(kind, mode):
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, X.size)
    xi = rng.standard_normal(X.size)
    c, alpha = 0.7, (1.1 if kind == "sigmoid" else 1.15)
    m = make(kind, mode, X.size, p=p, c=c, alpha=alpha)
    x = torch.tensor(X)
    got = m(x, noise=torch.tensor(xi)).detach().numpy()
    np.testing.assert_allclose(got, np_phi_output(kind, mode, X, xi, p, c, alpha), rtol=1e-12, atol=1e-12)
    m.eval()
    got_eval = m(x, noise=torch.tensor(xi)).detach().numpy()  # noise ignored in eval
    np.testing.assert_allclose(
        got_eval, np_phi_output(kind, mode, X, None, p, c, alpha), rtol=1e-12, atol=1e-12
    )
    # unsaturated points: Δ = 0, no noise, φ = u = h exactly (§4.3.4.1)
    lin = np.abs(X) < (2.0 if kind == "sigmoid" else 1.0)
    np.testing.assert_allclose(got[lin], np_h(kind, X[lin]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.9, 1.0, 1.1])
def test_direction_of_half_normal_noise(alpha):
    # d(x) = −sgn(x) sgn(1 − α): for α > 1 the noise pushes φ back up towards h at x ≫ 0 (§4.3.4.2)
    m = make("tanh", "nah", 2, p=[1.0, 1.0], c=1.0, alpha=alpha)
    x = torch.tensor([4.0, -4.0], dtype=torch.float64)
    base = alpha * 1.0 + (1 - alpha) * 4.0
    out = m(x, noise=torch.tensor([1.5, 1.5], dtype=torch.float64)).detach()
    sig = 1.0 * (1 / (1 + math.exp(3.0)) - 0.5) ** 2
    d = -1.0 * (1.0 if 1 - alpha >= 0 else -1.0)
    assert out[0].item() == pytest.approx(base + d * sig * 1.5, abs=1e-12)
    assert out[1].item() == pytest.approx(-base - d * sig * 1.5, abs=1e-12)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_input_noise_modes(kind):
    rng = np.random.default_rng(1)
    xi = rng.standard_normal(X.size)
    p = rng.uniform(-1, 1, X.size)
    x, t_xi = torch.tensor(X), torch.tensor(xi)
    c = 0.3
    thr = 2.0 if kind == "sigmoid" else 1.0
    nani = make(kind, "nani", None, c=c)
    np.testing.assert_allclose(nani(x, noise=t_xi).numpy(), np_h(kind, X + c * xi), atol=1e-15)
    nanis = make(kind, "nanis", None, c=c)
    mask = (np.abs(X) >= thr).astype(float)
    np.testing.assert_allclose(nanis(x, noise=t_xi).numpy(), np_h(kind, X + mask * c * xi), atol=1e-15)
    nanil = make(kind, "nanil", X.size, p=p, c=c)
    sig = np_sigma(kind, X, p, c)
    np.testing.assert_allclose(nanil(x, noise=t_xi).detach().numpy(), np_h(kind, X + sig * xi), atol=1e-15)
    # NANIS adds no noise in the linear regime; eval gives h(x) for all three
    lin = np.abs(X) < thr
    np.testing.assert_array_equal(nanis(x, noise=t_xi).numpy()[lin], np_h(kind, X[lin]))
    for m in (nani, nanis, nanil):
        m.eval()
        np.testing.assert_array_equal(m(x).detach().numpy(), np_h(kind, X))
    assert not any(n == "p" for n, _ in nani.named_parameters())


def test_internal_noise_is_seeded_standard_normal():
    m = make("sigmoid", "nah", X.size, p=np.linspace(-1, 1, X.size), c=2.0, alpha=1.1)
    x = torch.tensor(X)
    torch.manual_seed(123)
    out1 = m(x).detach()
    torch.manual_seed(123)
    xi = torch.randn_like(x)  # what the module must have drawn
    expected = np_phi_output("sigmoid", "nah", X, xi.numpy(), np.linspace(-1, 1, X.size), 2.0, 1.1)
    np.testing.assert_allclose(out1.numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.manual_seed(123)
    assert torch.equal(m(x).detach(), out1)
    assert not torch.equal(m(x).detach(), out1)  # a fresh draw differs


def test_noise_statistics_match_expectation():
    # E_ξ[φ] is the eval output (eq. 4.17); std of φ is σ(x)·std(ε)
    torch.manual_seed(0)
    n = 200_000
    m = NoisyHardTanh(mode="nah", c=0.5, alpha=1.15, shared=True).double()
    with torch.no_grad():
        m.p.fill_(0.8)
    x = torch.full((n,), 3.0, dtype=torch.float64)
    out = m(x).detach()
    sig = 0.5 * (1 / (1 + math.exp(-0.8 * -2.0)) - 0.5) ** 2
    mean_expected = 1.15 - 0.15 * 3.0 + sig * math.sqrt(2 / math.pi)
    std_expected = sig * math.sqrt(1 - 2 / math.pi)
    assert out.mean().item() == pytest.approx(mean_expected, abs=5 * std_expected / math.sqrt(n))
    assert out.std().item() == pytest.approx(std_expected, rel=0.02)
    assert m.eval()(x[:1]).item() == pytest.approx(mean_expected, abs=1e-12)


def test_gradient_flows_in_saturated_regime():
    # eq. 4.11: h'(x) = 0 when saturated, but φ' = σ'(x) ξ + (1 − α) u' is not
    m = make("sigmoid", "nan", 1, p=[0.9], c=1.0, alpha=1.0)
    x = torch.tensor([6.0], dtype=torch.float64, requires_grad=True)
    xi = torch.tensor([1.3], dtype=torch.float64)
    m(x, noise=xi).sum().backward()
    # dφ/dx = d · c · 2 (s − 0.5) s (1 − s) · p · dΔ/dx · ξ with Δ = 1 − (0.25x + 0.5), dΔ/dx = −0.25
    s = 1 / (1 + math.exp(-0.9 * (1 - 2.0)))
    d = -1.0  # −sgn(6)·sgn(0)
    expected = d * 2 * (s - 0.5) * s * (1 - s) * 0.9 * -0.25 * 1.3
    assert x.grad.item() == pytest.approx(expected, rel=1e-10)
    assert x.grad.item() != 0.0
    assert m.p.grad is not None and m.p.grad.abs().item() > 0


def test_lazy_per_unit_and_unit_dim_for_conv_maps():
    m = NoisyHardTanh(mode="nan", unit_dim=1)
    x = torch.randn(2, 3, 4, 5) * 3
    m.eval()(x)
    assert m.p.shape == (3,) and m.num_features == 3
    with torch.no_grad():
        m.p.copy_(torch.tensor([-1.0, 0.2, 0.9]))
    m.train()
    xi = torch.randn_like(x)
    got = m(x, noise=xi).detach().numpy()
    p_full = np.broadcast_to(np.array([-1.0, 0.2, 0.9])[None, :, None, None], x.shape)
    exp = np_phi_output("tanh", "nan", x.double().numpy(), xi.double().numpy(), p_full, 0.5, 1.15)
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    last = NoisyHardSigmoid()
    last(torch.randn(2, 7, 6))
    assert last.p.shape == (6,)
    with pytest.raises(ValueError, match="units"):
        last(torch.randn(2, 5))
    shared = NoisyHardSigmoid(shared=True)
    assert shared.p.shape == () and -1 <= shared.p.item() <= 1
    # U[-1, 1] initialisation
    big = NoisyHardSigmoid(num_features=10_000)
    assert (
        big.p.min().item() >= -1
        and big.p.max().item() <= 1
        and big.p.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.05)
    )


def test_c_is_a_settable_buffer_and_config_roundtrip():
    m = NoisyHardSigmoid(mode="nah", num_features=4)
    assert m.c.item() == pytest.approx(0.15) and m.alpha == 1.1
    assert NoisyHardTanh().c.item() == pytest.approx(0.5) and NoisyHardTanh().alpha == 1.15
    assert NoisyHardSigmoid(mode="nani").c.item() == pytest.approx(0.05)
    assert NoisyHardSigmoid(mode="nanis").c.item() == pytest.approx(0.25)
    m.c = 3.0
    assert isinstance(m.c, torch.Tensor) and m.c.item() == 3.0
    m.set_noise_scale(2.5)
    sd = m.state_dict()
    assert sd["c"].item() == 2.5 and sd["p"].shape == (4,)
    cfg = json.loads(json.dumps(m.config()))
    clone = NoisyHardSigmoid(**cfg)
    clone.load_state_dict(sd)
    x = torch.randn(3, 4) * 5
    assert torch.equal(clone.eval()(x), m.eval()(x))
    # a lazy module can load a materialised checkpoint
    lazy = NoisyHardSigmoid(mode="nah", c=0.1)
    lazy.load_state_dict(sd)
    assert torch.equal(lazy.eval()(x), m(x))
    with pytest.raises(ValueError):
        NoisyHardSigmoid(mode="bogus")
    assert isinstance(NoisyHardTanh.from_torch(nn.Tanh()), NoisyHardTanh)
    assert NoisyHardSigmoid.from_torch(nn.Sigmoid(), mode="nani").mode == "nani"
    with pytest.raises(TypeError):
        NoisyHardSigmoid.from_torch(nn.Tanh())


@pytest.mark.parametrize("mode", ["nan", "nah", "nani", "nanil", "nanis"])
@pytest.mark.parametrize("cls", [NoisyHardSigmoid, NoisyHardTanh])
def test_extreme_inputs_nan_propagation_and_low_precision(cls, mode):
    torch.manual_seed(0)
    m = cls(mode=mode, num_features=6)
    x32 = torch.tensor([-1e30, -1e4, -1.0, 0.5, 1e4, 1e30])
    for training in (True, False):
        m.train(training)
        assert torch.isfinite(m(x32)).all()
        x16 = torch.tensor([-6e4, -100.0, -1.0, 0.5, 100.0, 6e4], dtype=torch.float16)
        y16 = m(x16)
        assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
        yb = m(x16.to(torch.bfloat16))
        assert yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()
        xn = torch.tensor([float("nan"), 1.0, -5.0, float("nan"), 0.0, 3.0])
        yn = m(xn)
        assert torch.isnan(yn[[0, 3]]).all() and torch.isfinite(yn[[1, 2, 4, 5]]).all()
    # fp16 output agrees with the fp32 computation (it is done in fp32 internally)
    m.eval()
    x16 = torch.tensor([-6e4, -3.0, 0.5, 2.5, 6e4, 7.0], dtype=torch.float16)
    np.testing.assert_allclose(m(x16).float().detach().numpy(), m(x16.float()).detach().numpy(), rtol=2e-3)


@pytest.mark.parametrize("mode", ["nan", "nah"])
def test_output_noise_phi_gradients_for_mixed_gates_side_by_side(mode):
    """The hand-written backward of φ (one sigmoid- and one tanh-like module on concatenated units)."""
    from surgeon.noise.noisy import HardShape, output_noise_phi

    torch.manual_seed(13)
    mods = [NoisyHardSigmoid(mode=mode, num_features=3), NoisyHardTanh(mode=mode, num_features=3)]
    x = (torch.randn(4, 6, dtype=torch.float64) * 4).requires_grad_()
    p = torch.cat([m.p.detach().double() for m in mods]).requires_grad_()
    xi = torch.randn(4, 6, dtype=torch.float64)
    eps = xi if mode == "nan" else xi.abs()
    shape = HardShape.of(mods, 3, x)
    noise = eps * torch.tensor([m.c.item() * (1.0 if 1 - m.alpha >= 0 else -1.0) for m in mods],
                               dtype=torch.float64).repeat_interleave(3)
    assert torch.autograd.gradcheck(lambda x, p: output_noise_phi(x, p, noise, shape), (x, p))
    # and the values are eq. 4.15, by hand
    xn, pn, en = x.detach().numpy(), p.detach().numpy(), eps.numpy()
    sig_cols = np.arange(6) < 3
    u = np.where(sig_cols, 0.25 * xn + 0.5, xn)
    h = np.where(sig_cols, np.clip(u, 0, 1), np.clip(u, -1, 1))
    alpha = np.where(sig_cols, mods[0].alpha, mods[1].alpha)
    c = np.where(sig_cols, mods[0].c.item(), mods[1].c.item())
    sigma = c * (1 / (1 + np.exp(-pn * (h - u))) - 0.5) ** 2
    d = -np.where(xn >= 0, 1.0, -1.0) * np.where(1 - alpha >= 0, 1.0, -1.0)
    expected = alpha * h + (1 - alpha) * u + d * sigma * en
    np.testing.assert_allclose(output_noise_phi(x, p, noise, shape).detach().numpy(), expected, rtol=1e-12,
                               atol=1e-12)
