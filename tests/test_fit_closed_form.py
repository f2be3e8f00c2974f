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
from surgeon.surgery.fit_acdc import (
    Problem,
    RowDCT,
    backward_sweep,
    copy_state,
    forward_sweep,
    load_state,
    set_offset,
    state_of,
)
from surgeon.surgery.fit_lowrank import whitened_factors
from surgeon.surgery.moments import Moments
from surgeon.surgery.record import records


def _rows(n_rows: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n_rows, n, generator=gen, dtype=torch.float64) @
                      torch.randn(n, n, generator=gen, dtype=torch.float64))


def _block_oracle(layer: ACDCLinear, x: torch.Tensor, targets: torch.Tensor, name: str, k: int) -> torch.Tensor:
    """The fitted outputs of min over diagonal ``name``[k] and a free output offset (the biases only ever add one)
    of the squared output error: the output is affine in one diagonal, so probe its columns with unit vectors and
    solve with numpy's lstsq."""
    param = getattr(layer, name)
    saved, n = param[k].clone(), param.shape[1]

    def output(value: torch.Tensor) -> torch.Tensor:
        param[k] = value
        return layer(x).reshape(-1)

    with torch.no_grad():
        base = output(torch.zeros(n, dtype=torch.float64))
        columns = [output(torch.eye(n, dtype=torch.float64)[j]) - base for j in range(n)]
        param[k] = saved
    offsets = torch.eye(targets.shape[1], dtype=torch.float64).repeat(x.shape[0], 1)
    design = torch.cat([torch.stack(columns, 1), offsets], 1).numpy()
    solution, *_ = np.linalg.lstsq(design, (targets.reshape(-1) - base).numpy(), rcond=None)
    return torch.from_numpy(design @ solution) + base


def _best_offset_outputs(layer: ACDCLinear, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = layer(x)
    return (out + (targets - out).mean(0)).reshape(-1)


def test_each_als_block_is_the_dense_least_squares_solution() -> None:
    """Every block update of a forward then a backward sweep (Grams carried by transforms, offset eliminated)
    reaches the lstsq optimum over that diagonal given the blocks updated before it."""
    torch.manual_seed(0)
    layer = ACDCLinear(6, 8, depth=3, activation=None, seed=1, init_std=0.5).double()
    with torch.no_grad():
        layer.b.normal_(0, 0.3)
    x, targets = _rows(40, 6, 2), torch.randn(40, 8, dtype=torch.float64)
    state, t = state_of(layer), RowDCT(8)
    problem = Problem.of(Moments.of(x, targets), 8, offset=True, dtype=torch.float64)
    downstream, _ = backward_sweep(state, t, problem, None, damping=1e-12)
    before = copy_state(state)
    upstream, _ = forward_sweep(state, t, problem, downstream, damping=1e-12)
    order = [(k, name) for k in range(3) for name in "ad"]
    after_forward = copy_state(state)
    backward_sweep(state, t, problem, upstream, damping=1e-12)
    steps = [(before, after_forward, order), (after_forward, state, [(k, n) for k in (2, 1, 0) for n in "da"])]
    for start, end, sequence in steps:
        load_state(layer, start)
        for k, name in sequence:
            expected = _block_oracle(layer, x, targets, name, k)
            with torch.no_grad():
                getattr(layer, name)[k] = getattr(end, name)[k]
            np.testing.assert_allclose(_best_offset_outputs(layer, x, targets), expected, rtol=1e-6, atol=1e-8)


def test_offset_is_the_least_squares_intercept() -> None:
    layer = ACDCLinear(5, 4, depth=2, activation=None, seed=3, init_std=0.5).double()
    with torch.no_grad():
        layer.b.normal_(0, 0.3)
    x, targets = _rows(30, 5, 7), torch.randn(30, 4, dtype=torch.float64) + 2.0
    state, t = state_of(layer), RowDCT(5)
    set_offset(state, t, Problem.of(Moments.of(x, targets), 5, offset=True))
    load_state(layer, state)
    with torch.no_grad():
        np.testing.assert_allclose((targets - layer(x)).mean(0).numpy(), 0, atol=1e-10)


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


def test_fit_keeps_the_start_when_every_sweep_overfits() -> None:
    """A good starting cascade refitted on a few noisy rows: the sweeps overfit the noise, the clean held-out rows
    say so, and the fit hands back the start untouched."""
    gen = torch.Generator().manual_seed(8)
    weight = torch.randn(16, 16, generator=gen) / 4
    layer = ACDCLinear(16, 16, depth=6, activation=None, seed=0)
    clean = torch.randn(2000, 16, generator=gen)
    fit_layer(layer, DenseMap(weight, None), clean)
    start = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(20, 16, generator=gen)
    targets = x @ weight.T + 3 * torch.randn(20, 16, generator=gen)
    targets[4::5] = x[4::5] @ weight.T                      # the held-out rows are clean
    with torch.no_grad():
        before = float((layer(x[4::5]) - targets[4::5]).norm() / targets[4::5].norm())
    result = fit_layer(layer, DenseMap(weight, None), x, targets=targets)
    assert result.error == pytest.approx(before, rel=1e-6)
    for name, value in layer.state_dict().items():
        assert torch.equal(value, start[name]), name


def test_fitted_conversion_is_deterministic_and_saves_bit_exactly(tmp_path) -> None:
    import surgeon

    model, data = _mlp(4), torch.randn(256, 24, generator=torch.Generator().manual_seed(9))
    calibration = [data[i:i + 64] for i in range(0, 256, 64)]
    first, second = (convert(model, "acdc", depth=3, init="fit", calibration=calibration, min_features=16,
                             seed=0, quiet=True) for _ in range(2))
    surgeon.save(first, tmp_path / "fit.safetensors")
    back = surgeon.load(tmp_path / "fit.safetensors", _mlp(5))
    for (name, a), (_, b), (_, c) in zip(first.state_dict().items(), second.state_dict().items(),
                                         back.state_dict().items()):
        assert torch.equal(a, b) and torch.equal(a, c), name
