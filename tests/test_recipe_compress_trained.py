"""Recipe ``compress_trained`` in quick mode: every structure goes dense → fit → distill and is measured."""

from __future__ import annotations

import json
import math

from surgeon.recipes.runner import run_recipe


def test_compress_trained_quick(tmp_path) -> None:
    metrics = run_recipe("compress_trained", quick=True, out_dir=tmp_path, progress=False)
    summary = json.loads((tmp_path / "metrics.json").read_text())["summary"]
    assert summary == metrics["summary"]
    assert (tmp_path / "compress_trained.png").read_bytes()[:4] == b"\x89PNG"
    for kind in ("acdc", "fastfood", "lowrank"):
        stage = summary[kind]
        assert stage["params"] < summary["dense"]["params"]
        assert all(math.isfinite(e) for e in stage["fit_errors"])
        assert 0 <= stage["after_fit"] <= 1 and 0 <= stage["after_distill"] <= 1
        lm = summary["gpt2"][kind]   # every GPT-2 block projection (HF Conv1D) converted and measured
        assert lm["layers"] == 8 and lm["layer_params"] < lm["dense_layer_params"]
        assert math.isfinite(lm["after_fit"]) and math.isfinite(lm["after_distill"])
