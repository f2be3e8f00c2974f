"""Recipe ``compress_trained`` in quick mode: on each of its three trained models (digits MLP, HF GPT-2, timm ViT)
every structure goes dense → fit → distill and is measured, the low-rank baselines at their references' sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from surgeon.recipes.compress_parallel import run_parallel
from surgeon.recipes.compress_trained import MATCHED, STRUCTURES
from surgeon.recipes.runner import run_recipe

CONVERTED = {"digits_mlp": 2, "gpt2": 8, "vit": 8}   # hidden Linears; GPT-2 Conv1D projections; ViT qkv/proj/fc1/fc2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("compress_trained")
    return run_recipe("compress_trained", quick=True, out_dir=folder, progress=False), folder


def test_compress_trained_quick(quick_run) -> None:
    metrics, tmp_path = quick_run
    summary = json.loads((tmp_path / "metrics.json").read_text())["summary"]
    assert summary == metrics["summary"]
    assert (tmp_path / "compress_trained.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary) == set(CONVERTED)
    for part, layers in CONVERTED.items():
        dense = summary[part]["dense"]
        for structure in STRUCTURES:
            stage = summary[part][structure]
            assert stage["layers"] == layers, (part, structure)
            assert stage["layer_params"] < stage["dense_layer_params"]
            assert stage["params"] == dense["params"] - stage["dense_layer_params"] + stage["layer_params"]
            assert all(math.isfinite(e) for e in stage["fit_errors"])
            assert math.isfinite(stage["after_fit"]) and math.isfinite(stage["after_distill"])
            # GPT-2 alone is judged again on held-out rows no setting was chosen on
            assert ("after_distill_unseen" in stage) == (part == "gpt2"), (part, structure)
        if part == "gpt2":
            assert math.isfinite(dense["metric_unseen"]) and dense["metric_unseen"] > 1.0
            assert all(summary[part][s]["after_distill_unseen"] > 1.0 for s in STRUCTURES)
        for baseline, reference in MATCHED.items():
            # same size as the reference, to within one rank per layer: r·(in + out) for the largest layer
            low, ref = summary[part][baseline]["layer_params"], summary[part][reference]["layer_params"]
            assert ref - layers * 2 * 512 < low <= ref


def test_compress_trained_refuses_unknown_parts(tmp_path) -> None:
    with pytest.raises(ValueError, match="parts must name some of digits_mlp, gpt2, vit"):
        run_recipe("compress_trained", quick=True, out_dir=tmp_path, progress=False, overrides={"parts": ["bert"]})
    assert not (tmp_path / "metrics.json").exists()


def test_parallel_jobs_split_a_model_and_merge_to_the_serial_result(quick_run, tmp_path) -> None:
    """Two processes, one structure each, on the same model: the merged summary holds both, and each entry's
    size and metrics equal those of the one-process run (same seed, same dense model, sizes independent of the
    fit)."""
    serial = quick_run[0]["summary"]["digits_mlp"]
    metrics = run_parallel(tmp_path, jobs=[("digits_mlp", ("acdc",)), ("digits_mlp", ("lowrank",))], workers=2,
                           quick=True)
    merged = metrics["summary"]["digits_mlp"]
    assert set(merged) == {"metric", "higher_is_better", "dense", "acdc", "lowrank"}
    for structure in ("acdc", "lowrank"):
        for key in ("layer_params", "after_fit", "after_distill", "fit_errors"):
            assert merged[structure][key] == serial[structure][key], (structure, key)
    assert merged["dense"]["metric"] == serial["dense"]["metric"]
    assert [job["structures"] for job in metrics["jobs"]] == [["acdc"], ["lowrank"]]
    assert all(job["cpu_seconds"] > 0 for job in metrics["jobs"])
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"] == metrics["summary"]
    assert (tmp_path / "compress_trained.png").read_bytes()[:4] == b"\x89PNG"


def test_compress_trained_refuses_unknown_structures(tmp_path) -> None:
    with pytest.raises(ValueError, match="structures must name some of acdc"):
        run_recipe("compress_trained", quick=True, out_dir=tmp_path, progress=False,
                   overrides={"parts": ["digits_mlp"], "digits_mlp": {"structures": ["svd"]}})
