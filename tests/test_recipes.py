"""Recipes (issue 8): every recipe runs in quick mode, writes metrics + plot, and shows its robust effects."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from surgeon.recipes.runner import RECIPES_DIR, list_recipes, load_recipe, resolve_entry, run_recipe

ALL = ["acdc_regression", "alexnet_fc_acdc", "compress_trained", "convert_trained", "digits_deepfried",
       "parity_mollified", "unique_count_noisy"]


def _numbers(value):
    """Every int/float inside a nested JSON structure."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def _run(name: str, tmp_path: Path, **kwargs) -> dict:
    out = tmp_path / name
    metrics = run_recipe(name, quick=True, out_dir=out, progress=False, **kwargs)
    written = json.loads((out / "metrics.json").read_text())
    assert written["summary"] == metrics["summary"]
    plot = out / f"{name}.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    summary_numbers = list(_numbers(written["summary"]))
    assert summary_numbers and all(math.isfinite(v) for v in summary_numbers)
    return written


def test_recipe_files_are_complete():
    assert list_recipes() == ALL
    for name in ALL:
        spec = load_recipe(name)
        assert callable(resolve_entry(spec["entry"]))
        quick = load_recipe(name, quick=True)
        assert (RECIPES_DIR / f"{name}.yaml").read_text().count("quick:") == 1
        # the quick block changes something, and only keys that exist in params
        raw = __import__("yaml").safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
        assert set(raw["quick"]) <= set(raw["params"]) and quick["params"] != spec["params"]


def test_unknown_recipe_and_bad_entry(tmp_path):
    with pytest.raises(FileNotFoundError, match="known recipes"):
        load_recipe("no_such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nparams: {}\n")
    with pytest.raises(ValueError, match="entry"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="module:function"):
        resolve_entry("surgeon.recipes.runner")


def test_acdc_regression_identity_init_beats_zero_init(tmp_path):
    m = _run("acdc_regression", tmp_path)
    s = m["summary"]
    deepest = str(max(m["params"]["depths"]))
    # Fig. 3.4: a deep cascade trains from N(1, σ²) but not from N(0, σ²) (stuck near predicting 0: MSE ≈ E[Y²])
    assert s["identity"][deepest]["max"] * 20 < s["zero"][deepest]["min"]
    assert s["identity"][deepest]["mean"] < s["identity"]["1"]["mean"]
    assert s["least_squares_optimum"]["max"] < 2e-4   # the noise floor, σ² = 1e-4
    assert m["runs"][f"identity/K={deepest}"][0]["params"] == 2 * int(deepest) * 32


def test_acdc_regression_is_reproducible(tmp_path):
    tiny = {"steps": 15, "depths": [2]}
    a = run_recipe("acdc_regression", quick=True, out_dir=tmp_path / "a", progress=False, overrides=tiny, seed=3)
    b = run_recipe("acdc_regression", quick=True, out_dir=tmp_path / "b", progress=False, overrides=tiny, seed=3)
    c = run_recipe("acdc_regression", quick=True, out_dir=tmp_path / "c", progress=False, overrides=tiny, seed=4)
    assert a["summary"] == b["summary"]
    assert a["summary"] != c["summary"]


def test_alexnet_parameter_accounting(tmp_path):
    s = _run("alexnet_fc_acdc", tmp_path)["summary"]
    assert s["reference_total"] == 61_100_840
    assert s["reference_hidden_fc"] == 9216 * 4096 + 4096 + 4096 * 4096 + 4096
    assert s["cascade_sell"] == 12 * 3 * 9216 and s["cascade_nobias_sell"] == 12 * 2 * 9216
    assert s["per_layer_sell"] == 12 * 3 * (9216 + 4096)
    fc_dropped = s["reference_hidden_fc"] - s["cascade_sell"]
    assert s["cascade_total"] == s["reference_total"] - fc_dropped
    assert s["thesis_sell"] == 165_888
    # the thesis' set-up: the cascade at N = 9216 into a 9216 x 1000 softmax, counted both ways
    softmax = 9216 * 1000 + 1000
    assert s["thesis_setup_thesis_counting_classifier"] == 12 * 4 * 9216 + softmax      # A, Ab, D, Db
    assert s["thesis_setup_surgeon_counting_classifier"] == 12 * 3 * 9216 + softmax     # a, d, bias
    assert s["n9216_total"] == s["reference_total"] - s["reference_all_fc"] + 12 * 3 * 9216 + softmax


def test_digits_deepfried(tmp_path):
    m = _run("digits_deepfried", tmp_path)
    s = m["summary"]
    assert set(s) == set(m["params"]["kinds"])
    assert s["acdc"]["fc_all_params"] < s["dense"]["fc_all_params"]
    assert s["adaptive_fastfood"]["fc_all_params"] < s["dense"]["fc_all_params"]
    assert s["dense"]["all_params"] == s["dense"]["learned_params"]   # nothing fixed in a dense net
    for kind in s:   # every variant learns something in 3 epochs (chance is 0.9 error), on each seed
        assert s[kind]["test_error"]["max"] < 0.7 and s[kind]["test_errors"]["n"] == 2, kind


def test_parity_mollified(tmp_path):
    m = _run("parity_mollified", tmp_path)
    assert set(m["summary"]) == {"plain", "mollified", "residual_bn", "mollified_residual_bn"}
    assert "chance" in m["note"]
    for run in m["runs"]["mollified"]:
        levels = run["mean_noise_level"]
        # the linear schedule p_t = max(0, 1 - t / 100), recorded at every 20th update
        assert levels == pytest.approx([max(0.0, 1 - 20 * (i + 1) / 100) for i in range(len(levels))])


def test_unique_count_noisy(tmp_path):
    m = _run("unique_count_noisy", tmp_path)
    assert set(m["summary"]) == {"reference", "nan", "nan_annealed", "hard", "majority_class_error"}
    every, steps = m["annealing_every"], m["params"]["steps"]
    assert every == pytest.approx(0.8 * steps / 3599)   # c reaches 0.5 at 80 % of the run
    for run in m["runs"]["nan_annealed"]:
        c = run["c_schedule"]
        # c_t = max(0.5, 30 / sqrt(t / every + 1)), recorded at t = 10, 20, ... (40 steps, 4 evaluations)
        assert c == pytest.approx([max(0.5, 30 / math.sqrt(10 * (i + 1) / every + 1)) for i in range(len(c))])


def test_convert_trained(tmp_path):
    m = _run("convert_trained", tmp_path)
    s = m["summary"]
    assert s["converted"]["params"] < s["dense"]["params"] and s["finetuned"]["params"] == s["converted"]["params"]
    assert s["dense"]["test_accuracy"] > 0.5
    assert m["changes"] and all(ch["new"] == "ACDCLinear" and ch["fit_error"] is not None for ch in m["changes"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes(tmp_path):
    """The digits recipe under DDP (gloo, 2 CPU processes): rank 0 alone writes, numbers are sane."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "surgeon.recipes", "digits_deepfried", "--quick", "--no-progress",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert (out / "digits_deepfried.png").is_file()
    assert all(v["test_error"]["max"] < 0.8 for v in metrics["summary"].values())


def test_train_skips_non_finite_updates_and_metrics_are_strict_json():
    import torch

    from surgeon.recipes.engine import RecipeContext, train
    from surgeon.recipes.runner import json_safe

    ctx = RecipeContext(name="t", out_dir="unused", seed=0, device=torch.device("cpu"))
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1   # every third loss is NaN, as a blown-up noisy LSTM would give
        loss = torch.nn.functional.mse_loss(out, y)
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    data = torch.utils.data.TensorDataset(torch.randn(40, 3), torch.randn(40, 1))
    result = train(ctx, model, torch.optim.SGD(model.parameters(), lr=0.1), ctx.loader(data, 4), loss_fn, 9)
    assert result.skipped == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json_safe({"a": [1.0, float("nan")], "b": float("inf"), "c": 2}) == {"a": [1.0, None], "b": None, "c": 2}


def test_unique_count_lr_decays_late_by_a_cosine():
    """Table 4.5's schedule: the full rate until decay_from·steps, a cosine from there to 0 at the last update."""
    from surgeon.recipes.unique_count_noisy import late_cosine

    factor = late_cosine(1000, 0.6)
    assert factor(0) == factor(599) == 1.0
    assert factor(800) == pytest.approx(0.5) and factor(1000) == pytest.approx(0.0)
    assert late_cosine(1000, 1.0)(999) == 1.0


def test_unique_count_settled_compares_the_last_quarter_fall_with_the_test_sets_standard_error():
    """Settled: the error fell by at most 2 binomial standard errors of the final error from 3/4 of the run."""
    from surgeon.recipes.unique_count_noisy import settled

    curve = [0.5] * 14 + [0.034, 0.033, 0.032, 0.031, 0.030, 0.030]   # 20 evaluations, the 15th at 3/4 of the run
    result = settled(curve, 4000)
    assert result["standard_error"] == pytest.approx(math.sqrt(0.03 * 0.97 / 4000))   # 0.0027
    assert result["fall"] == pytest.approx(0.004) and result["settled"]
    curve[14] = 0.040   # a fall of 1 point: 3.7 standard errors
    assert not settled(curve, 4000)["settled"]
    assert settled(curve, 100)["settled"]   # 100 test examples cannot resolve it (sd 1.7 points)
    assert settled(curve[:3], 4000) is None and settled([*curve[:-1], None], 4000) is None


@pytest.mark.parametrize("gates", [None, "noisy", "hard"])
def test_unique_count_forget_bias_opens_the_forget_gate_of_every_variant(gates):
    """forget_bias lands on the forget block (torch's i, f, g, o order: units H..2H) of the input bias and nowhere
    else; a real nn.LSTM with those weights then starts with its forget gate at sigmoid(1 + b) on zero input."""
    import torch

    from surgeon.recipes.unique_count_noisy import UniqueCounter

    torch.manual_seed(3)
    plain = UniqueCounter(11, 11, 4, 5, 6, gates)
    torch.manual_seed(3)
    opened = UniqueCounter(11, 11, 4, 5, 6, gates, forget_bias=1.0)
    shift = opened.rnn.bias_ih_l0.detach() - plain.rnn.bias_ih_l0.detach()
    assert torch.equal(shift, torch.tensor([0.0] * 5 + [1.0] * 5 + [0.0] * 10))
    assert torch.equal(opened.rnn.bias_hh_l0, plain.rnn.bias_hh_l0)
    if gates is None:
        _, (_, c) = opened.rnn(torch.zeros(1, 1, 4), (torch.zeros(1, 1, 5), torch.ones(1, 1, 5)))
        b = opened.rnn.bias_ih_l0.detach() + opened.rnn.bias_hh_l0.detach()
        i, f, g = torch.sigmoid(b[:5]), torch.sigmoid(b[5:10]), torch.tanh(b[10:15])
        torch.testing.assert_close(c.flatten(), f + i * g)
