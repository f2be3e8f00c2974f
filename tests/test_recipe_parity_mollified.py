"""Fig. 4.16's parity models against hand-built forward passes from the thesis' equations (4.24–4.30)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgeon.noise import Annealer, MollifiedActivation, StochasticSkip
from surgeon.recipes.parity_mollified import MOLLIFIED_MODELS, build

BITS, WIDTH, LAYERS = 5, 8, 3


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


def _affine(lin: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    return h @ lin.weight.detach().T + lin.bias.detach()


def _batch_norm(norm: nn.BatchNorm1d, z: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm by hand: batch mean, biased batch variance."""
    mean, var = z.mean(0), z.var(0, unbiased=False)
    return (z - mean) / torch.sqrt(var + norm.eps) * norm.weight.detach() + norm.bias.detach()


def _set_p(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, (StochasticSkip, MollifiedActivation)):
            m.set_noise_level(p)


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build(kind, BITS, WIDTH, LAYERS).double().train()
    for norm in _norms(model):   # non-trivial affine parameters, so the oracle checks they are used
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.5, 0.5)
    return model, torch.randint(0, 2, (16, BITS)).double() * 2 - 1


@pytest.mark.parametrize("kind", MOLLIFIED_MODELS)
def test_every_mollified_layer_is_the_identity_at_p_one(kind):
    # eq. 4.28 with π = 1: h^l = h^{l−1}; the 5 input bits are zero-padded to the width (eq. 4.27's padding), so the
    # net is the output layer applied to the padded input — a linear classifier of the bits. With the residual
    # connection outside the skip this would be 2^(L−1) times the input instead.
    model, x = _model(kind)
    padded = torch.cat([x, torch.zeros(len(x), WIDTH - BITS, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(model(x), _affine(_linears(model)[-1], padded), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MOLLIFIED_MODELS)
def test_every_mollified_layer_is_its_full_block_at_p_zero(kind):
    # π = 0 and s = 0 (p = 0 in eq. 4.25): ψ = f, i.e. sigmoid; the residual variants add h (Fig. 4.15's dashed line)
    model, x = _model(kind)
    _set_p(model, 0.0)
    linears, norms = _linears(model), _norms(model)
    h = x
    for i, lin in enumerate(linears[:-1]):
        z = _affine(lin, h)
        z = _batch_norm(norms[i], z) if norms else z
        h = (h if "residual" in kind and i > 0 else 0) + torch.sigmoid(z)
    torch.testing.assert_close(model(x), _affine(linears[-1], h), rtol=0, atol=1e-12)


def test_mollified_residual_bn_at_p_zero_has_the_residual_bn_architecture():
    # same parameter shapes layer by layer as the residual + BN baseline: p = 0 is that baseline
    shapes = [tuple(p.shape) for p in build("residual_bn", BITS, WIDTH, LAYERS).parameters()]
    mollified = build("mollified_residual_bn", BITS, WIDTH, LAYERS)
    learned = [tuple(p.shape) for n, p in mollified.named_parameters() if not n.endswith(".a")]
    assert learned == shapes


def test_the_annealer_sets_one_p_per_layer_in_skip_and_activation():
    model, _ = _model("mollified_residual_bn")
    ann = Annealer(model, "loss-exp", k=30.0, beta=0.0)
    ann.step(0.7)
    ann.step(0.7)
    # eq. 4.31 at t = 2, v = 0.7, L = 3: p^l = 1 − exp(−k v l / (t L))
    expected = {layer: 1 - torch.exp(torch.tensor(-30.0 * 0.7 * layer / (2 * LAYERS))).item()
                for layer in range(1, LAYERS + 1)}
    skips = [m for m in model.modules() if isinstance(m, StochasticSkip)]
    assert len(skips) == LAYERS
    for layer, skip in enumerate(skips, start=1):
        acts = [m for m in skip.modules() if isinstance(m, MollifiedActivation)]
        assert len(acts) == 1
        assert float(skip.p) == pytest.approx(expected[layer]) and float(acts[0].p) == pytest.approx(expected[layer])
