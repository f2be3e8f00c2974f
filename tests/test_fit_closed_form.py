"""Closed-form fitting (ALS for ACDC, Fastfood blocks, whitened SVD), checked against numpy least squares / SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.layers.lowrank import LowRankLinear, rank_for_ratio
from surgeon.surgery.convert import convert
from surgeon.surgery.fit import DenseMap, fit_layer, relative_error
from surgeon.surgery.fit_acdc import RowDCT, _through_factor, _update_factor, backward_sweep, state_of
from surgeon.surgery.fit_lowrank import whitened_factors
from surgeon.surgery.moments import Moments
from surgeon.surgery.record import records


def _rows(n_rows: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n_rows, n, generator=gen, dtype=torch.float64) @
                      torch.randn(n, n, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("block", ["a", "d", "b"])
def test_one_als_block_is_the_dense_least_squares_solution(block: str) -> None:
    torch.manual_seed(0)
    layer = ACDCLinear(6, 8, depth=3, activation=None, seed=1, init_std=0.5).double()
    with torch.no_grad():
        layer.b.normal_(0, 0.3)
    x, targets = _rows(40, 6, 2), torch.randn(40, 8, dtype=torch.float64)
    k = 1
    param = getattr(layer, block)

    def output(value: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            saved = param[k].clone()
            param[k] = value
            out = layer(x)
            param[k] = saved
        return out

    # the output is affine in one diagonal: probe its columns with unit vectors, then numpy's lstsq
    base = output(torch.zeros(8, dtype=torch.float64))
    design = torch.stack([(output(torch.eye(8, dtype=torch.float64)[j]) - base).reshape(-1) for j in range(8)], 1)
    expected, *_ = np.linalg.lstsq(design.numpy(), (targets - base).reshape(-1).numpy(), rcond=None)

    state = state_of(layer)
    t = RowDCT(8)
    moments = Moments.of(x, targets)
    downstream = backward_sweep(state, t, moments, None, None)
    e = torch.zeros(7, 8, dtype=torch.float64)
    e[:6, :6] = torch.eye(6, dtype=torch.float64)
    unit = torch.zeros(7, dtype=torch.float64)
    unit[-1] = 1.0
    e = _through_factor(e, state, 0, t, unit)
    _update_factor(state, k, t, moments, e, moments.gram @ e, *downstream[k], damping=1e-12, blocks=block)
    # compare fitted outputs: padded coordinates leave a_k's system rank-deficient (the Gram products run in fp32)
    got = getattr(state, block)[k].numpy()
    np.testing.assert_allclose(design.numpy() @ got, design.numpy() @ expected, rtol=1e-5, atol=1e-6)


def test_fit_cascade_never_worsens_and_matches_row_error() -> None:
    x = _rows(600, 32, 3).float()
    dense = DenseMap(torch.randn(32, 32) / 6, torch.randn(32) * 0.1)
    layer = ACDCLinear(32, 32, depth=4, activation=None, seed=0)
    start = relative_error(layer, dense, x[4::5])
    result = fit_layer(layer, dense, x)
    assert result.error < 0.8 * start
    assert abs(relative_error(layer, dense, x[4::5]) - result.error) < 1e-4   # Gram error == row error


def test_gradient_fit_keeps_the_start_when_it_diverges() -> None:
    x = _rows(200, 16, 4).float()
    dense = DenseMap(torch.randn(16, 16), None)
    layer = ACDCLinear(16, 16, depth=2, activation="relu", seed=0)
    start = relative_error(layer, dense, x[4::5])
    result = fit_layer(layer, dense, x, steps=20, lr=1e3)
    assert result.error <= start + 1e-9


def test_fastfood_fit_improves_on_its_random_init() -> None:
    x = _rows(500, 16, 5).float()
    dense = DenseMap(torch.randn(24, 16) / 4, torch.randn(24))
    layer = FastfoodLinear(16, 24, seed=0)
    start = relative_error(layer, dense, x[4::5])
    result = fit_layer(layer, dense, x)
    assert result.error < 0.9 * start and result.error < 1


def test_lowrank_plain_svd_matches_numpy() -> None:
    weight = torch.randn(12, 9, dtype=torch.float64)
    layer = LowRankLinear.from_dense(weight, None, rank=4)
    u, s, vt = np.linalg.svd(weight.numpy())
    np.testing.assert_allclose((layer.u @ layer.v).detach().numpy(), (u[:, :4] * s[:4]) @ vt[:4], atol=1e-10)


def test_whitened_lowrank_is_reduced_rank_regression() -> None:
    x = _rows(300, 10, 6)
    targets = x @ torch.randn(10, 7, dtype=torch.float64) + torch.randn(7, dtype=torch.float64) \
        + 0.1 * torch.randn(300, 7, dtype=torch.float64)
    # oracle: ordinary least squares with an intercept, then project its fitted values on their top-r directions
    design = np.hstack([x.numpy(), np.ones((300, 1))])
    ols, *_ = np.linalg.lstsq(design, targets.numpy(), rcond=None)
    fitted = design @ ols
    for rank in (7, 3):
        _, _, vt = np.linalg.svd(fitted - fitted.mean(0), full_matrices=False)
        expected = fitted.mean(0) + (fitted - fitted.mean(0)) @ vt[:rank].T @ vt[:rank]
        u, v, bias = whitened_factors(Moments.of(x, targets), rank)
        got = (x @ v.T @ u.T + bias).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-7)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 5)).eval()


def test_sequential_fitting_beats_independent() -> None:
    model = _mlp(0)
    with torch.no_grad():   # near rank-6 weights, like trained layers, so that a small structure can follow them
        for i in (0, 2, 4):
            w = model[i].weight
            w.copy_((torch.randn(w.shape[0], 6) @ torch.randn(6, w.shape[1]) + 0.1 * torch.randn_like(w))
                    / w.shape[1] ** 0.5)
    data = torch.randn(768, 24)
    calibration = [data[i:i + 128] for i in range(0, 512, 128)]
    held = data[512:]
    errors = {}
    for sequential in (False, True):
        out = convert(model, "acdc", depth=2, init="fit", calibration=calibration, sequential=sequential,
                      min_features=16, quiet=True)
        with torch.no_grad():
            errors[sequential] = float((out(held) - model(held)).norm() / model(held).norm())
    assert errors[True] < 0.95 * errors[False]


def test_lowrank_convert_records_ranks_and_replays(tmp_path) -> None:
    import surgeon

    model = _mlp(1)
    out = convert(model, "lowrank", ratio=0.2, min_features=16, seed=0, init="fit")
    rank = rank_for_ratio(64, 64, 0.2)
    assert isinstance(out[2], LowRankLinear) and out[2].rank == rank
    assert records(out)[-1].config["rank"]["2"] == rank and records(out)[-1].config["ratio"] is None
    # data-free: the plain SVD of the weight
    u, s, vt = np.linalg.svd(model[2].weight.detach().double().numpy())
    np.testing.assert_allclose(out[2].u.detach() @ out[2].v.detach(), (u[:, :rank] * s[:rank]) @ vt[:rank],
                               atol=1e-5)
    surgeon.save(out, tmp_path / "m.safetensors")
    back = surgeon.load(tmp_path / "m.safetensors", _mlp(2))
    for (name, a), (_, b) in zip(out.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_lowrank_onnx_parity(tmp_path) -> None:
    import onnxruntime as ort

    from surgeon.io.onnx_export import export_onnx

    out = convert(_mlp(3), "lowrank", rank=5, min_features=16).eval()
    result = export_onnx(out, torch.randn(4, 24), tmp_path / "lr.onnx")
    assert result.passed
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    x = torch.randn(11, 24)
    (got,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, out(x).numpy(), atol=1e-5)


def test_low_rank_layer_takes_the_default_dtype_like_nn_linear():
    """Built without a dtype, the factors follow torch's default dtype (they are drawn in float64 first)."""
    layer = LowRankLinear(12, 10, rank=3)
    assert {p.dtype for p in layer.parameters()} == {torch.get_default_dtype()}
    assert layer(torch.randn(2, 12)).dtype == torch.get_default_dtype()
