"""Stochastic skipping (thesis eqs. 4.27–4.30)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from surgeon.noise import MollifiedActivation, StochasticSkip


class Affine(nn.Module):
    """A deterministic block with a known output: y = 2 x[..., :k] + 1 (or tiled to k)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = -(-self.k // x.shape[-1])
        return 2.0 * x.repeat(*([1] * (x.dim() - 1)), reps)[..., : self.k] + 1.0


def test_p_one_is_identity_and_p_zero_is_the_block():
    x = torch.randn(4, 6)
    skip = StochasticSkip(Affine(6), p=1.0)
    assert torch.equal(skip(x), x)
    skip.set_noise_level(0.0)
    assert torch.equal(skip(x), 2 * x + 1)


def test_per_unit_bernoulli_choice_with_seed():
    torch.manual_seed(0)
    x = torch.randn(300, 40)
    skip = StochasticSkip(Affine(40), p=0.3)
    out = skip(x)
    y = 2 * x + 1
    took_input = out == x
    took_block = out == y
    assert (took_input | took_block).all() and not (took_input & took_block).any()
    # π ~ Bernoulli(p) per unit and example: about 30 % copied, std of the proportion ≈ 0.0026
    assert took_input.float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert 0 < took_input[:, 0].float().mean().item() < 1  # decisions vary across examples
    torch.manual_seed(0)
    _ = torch.randn(300, 40)
    assert torch.equal(skip(x), out)  # reproducible under torch.manual_seed
    torch.manual_seed(0)
    _ = torch.randn(300, 40)
    pi = torch.rand(300, 40) < 0.3  # the draw the module makes
    assert torch.equal(out, torch.where(pi, x, y))


def test_zero_pad_and_truncate_along_unit_dim():
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    grow = StochasticSkip(Affine(7), p=1.0)
    expected = np.concatenate([x.numpy(), np.zeros((3, 3), np.float32)], axis=1)
    np.testing.assert_array_equal(grow(x).numpy(), expected)
    shrink = StochasticSkip(Affine(2), p=1.0)
    np.testing.assert_array_equal(shrink(x).numpy(), x.numpy()[:, :2])
    # channel dim of a conv map
    conv = nn.Conv2d(3, 5, 1)
    xs = torch.randn(2, 3, 4, 4)
    s = StochasticSkip(conv, p=1.0, unit_dim=1)
    out = s(xs)
    assert out.shape == (2, 5, 4, 4)
    assert torch.equal(out[:, :3], xs) and torch.equal(out[:, 3:], torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError):
        StochasticSkip(nn.Flatten(), p=1.0)(xs)


def test_projection_option():
    proj = nn.Linear(4, 6, bias=False)
    s = StochasticSkip(nn.Linear(4, 6), p=1.0, projection=proj)
    x = torch.randn(5, 4)
    np.testing.assert_allclose(
        s(x).detach().numpy(), x.numpy() @ proj.weight.detach().numpy().T, rtol=1e-5, atol=1e-6
    )


def test_eval_expectation_and_full():
    x = torch.randn(8, 6, dtype=torch.float64)
    s = StochasticSkip(Affine(6), p=0.25).double().eval()
    np.testing.assert_allclose(s(x).numpy(), 0.25 * x.numpy() + 0.75 * (2 * x.numpy() + 1), rtol=1e-15)
    s.set_noise_level(0.0)
    assert torch.equal(s(x), 2 * x + 1)  # at the end of annealing the expectation is the full network
    full = StochasticSkip(Affine(6), p=0.6, eval_mode="full").eval()
    assert torch.equal(full(x), 2 * x + 1)
    # training mean converges to the eval expectation
    torch.manual_seed(3)
    s = StochasticSkip(Affine(1), p=0.4)
    big = torch.ones(200_000, 1, dtype=torch.float64)
    assert s(big).mean().item() == pytest.approx(0.4 * 1 + 0.6 * 3, abs=0.01)


def test_inf_in_the_unused_branch_does_not_make_nan():
    class Inf(nn.Module):
        def forward(self, x):
            return torch.full_like(x, float("inf"))

    s = StochasticSkip(Inf(), p=1.0)
    assert torch.equal(s(torch.ones(3)), torch.ones(3))
    nan_in = torch.tensor([float("nan"), 1.0])
    assert torch.isnan(StochasticSkip(Affine(2), p=1.0)(nan_in)[0])


def test_config_state_and_nested_mollified_layer():
    block = nn.Sequential(nn.Linear(4, 4), MollifiedActivation(num_features=4))
    s = StochasticSkip(block, p=0.7, layer=3)
    cfg = json.loads(json.dumps(s.config()))
    assert cfg == {"layer": 3, "p": 0.7, "unit_dim": -1, "eval_mode": "expectation"}
    assert s.state_dict()["p"].item() == 0.7
    s.p = 0.2
    assert s.noise_level == pytest.approx(0.2)
    assert StochasticSkip.from_torch(nn.Linear(2, 2)).noise_level == 1.0
    with pytest.raises(ValueError):
        StochasticSkip(nn.Identity(), p=-0.1)
