"""``convert(..., init="fit")`` on a small MLP trained here on scikit-learn's bundled digits (64 features)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from surgeon.errors import FitWarning
from surgeon.layers.acdc import ACDCLinear
from surgeon.surgery.convert import convert
from surgeon.surgery.fit import DenseMap, relative_error
from surgeon.surgery.record import records


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    torch.manual_seed(0)
    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32) / 16.0
    y = torch.tensor(labels)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        for i in range(0, 1400, 100):
            loss = nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return {"model": model, "x_train": x[:1400], "x_test": x[1400:], "y_test": y[1400:],
            "calibration": [x[i:i + 200] for i in range(0, 1400, 200)]}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def test_auto_depth_reports_honestly(digits: dict) -> None:
    model, x_test, y_test = digits["model"], digits["x_test"], digits["y_test"]
    dense_acc = _accuracy(model, x_test, y_test)
    assert dense_acc > 85
    with pytest.warns(FitWarning) as caught:
        out = convert(model, depth="auto", init="fit", max_error=0.02, target_ratio=20, include=["2"],
                      calibration=digits["calibration"], fit_steps=40, fit_rows=512, seed=0, quiet=True)
    change = records(out)[-1].changes[0]
    assert isinstance(out[2], ACDCLinear) and out[2].depth in (1, 2, 4)    # ratio ≥ 20 allows depth ≤ 4
    assert math.isfinite(change.fit_error) and 0 < change.fit_error < 1
    hidden = torch.relu(model[0](x_test))
    unseen = relative_error(out[2], DenseMap(model[2].weight, model[2].bias), hidden)
    # The held-out error the record states describes the layer on data it never saw, too.
    assert abs(unseen - change.fit_error) < 0.1
    accuracy_ok = abs(_accuracy(out, x_test, y_test) - dense_acc) <= 1
    honest = change.fit_error > 0.02 and "no depth met max_error=0.02" in change.note and "2" in str(caught[0].message)
    assert accuracy_ok or honest
    assert records(out)[-1].config["depth"] == {"2": out[2].depth}


def test_fit_beats_random_and_keeps_accuracy(digits: dict) -> None:
    model, x_test, y_test = digits["model"], digits["x_test"], digits["y_test"]
    dense = DenseMap(model[2].weight, model[2].bias)
    hidden = torch.relu(model[0](x_test))
    fitted = convert(model, depth=8, init="fit", include=["2"], calibration=digits["calibration"],
                     fit_steps=40, fit_rows=384, seed=0, quiet=True)
    random = convert(model, depth=8, init="random", include=["2"], activation=None, seed=0)
    fit_err = relative_error(fitted[2], dense, hidden)
    random_err = relative_error(random[2], dense, hidden)
    assert fit_err < 0.6 < random_err
    # An 8-deep cascade holds 6,144 numbers against the dense 65,792, so it cannot match the layer closely;
    # the fit must still keep the classifier far above chance (10 %) and well above the random cascade.
    fitted_acc, random_acc = _accuracy(fitted, x_test, y_test), _accuracy(random, x_test, y_test)
    print(f"\ndigits: dense {_accuracy(model, x_test, y_test):.1f} %, fitted depth 8 {fitted_acc:.1f} % "
          f"(layer error {fit_err:.3f}), random depth 8 {random_acc:.1f} % (error {random_err:.3f})")
    assert fitted_acc > 50 and fitted_acc > random_acc


def test_data_free_fit_recovers_a_layer_that_is_a_cascade() -> None:
    torch.manual_seed(1)
    source = ACDCLinear(64, 64, depth=1, activation=None, permute=False, init_std=0.5, seed=11)
    with torch.no_grad():
        source.b.normal_(0, 0.1)
    dense = source.to_dense()
    model = nn.Sequential(dense, nn.ReLU(), nn.Linear(64, 2))
    out = convert(model, depth=1, init="fit", permute=False, fit_steps=300, fit_rows=1024, seed=0, quiet=True)
    change = records(out)[-1].changes[0]
    probes = torch.randn(256, 64)
    assert change.fit_error < 0.05
    assert relative_error(out[0], DenseMap(dense.weight, dense.bias), probes) < 0.05


def test_fit_sweeps_caps_the_closed_form_sweeps(digits: dict) -> None:
    """``fit_sweeps`` reaches the solver: one sweep leaves the cascade further from the dense layer (measured on
    unseen rows) than the default cap, and more sweeps than the default bring it closer still."""
    model, x_test = digits["model"], digits["x_test"]
    dense, hidden = DenseMap(model[2].weight, model[2].bias), torch.relu(model[0](x_test))
    errors = {}
    for sweeps in (1, None, 40):
        out = convert(model, depth=4, init="fit", include=["2"], calibration=digits["calibration"], seed=0,
                      quiet=True, fit_sweeps=sweeps)
        errors[sweeps] = relative_error(out[2], dense, hidden)
    assert errors[1] > errors[None] > errors[40]
