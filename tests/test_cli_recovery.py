"""``surgeon distill`` and ``surgeon compare`` end to end, and their one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from surgeon.cli.app import app

runner = CliRunner()
ARCH = "tests.test_cli_recovery:small_mlp"
OTHER = "tests.test_cli_recovery:other_mlp"


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def other_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3))


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code: int, stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and all(n.lower() in stderr.lower() for n in needles), stderr


def _files(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(small_mlp().state_dict(), teacher)
    data = tmp_path / "x.safetensors"
    save_file({"inputs": torch.randn(200, 16)}, str(data))
    student = tmp_path / "student.safetensors"
    code, _, err = _run("convert", str(teacher), "--arch", ARCH, "--linear", "lowrank", "--init", "fit",
                        "-o", str(student), "-q")
    assert code == 0, err
    return teacher, data, student


def test_distill_writes_a_model_that_loads(tmp_path) -> None:
    import surgeon

    teacher, data, student = _files(tmp_path)
    out = tmp_path / "kd.safetensors"
    code, stdout, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(data),
                             "--steps", "5", "-o", str(out))
    assert code == 0, err
    assert "distill: 5 steps" in stdout
    model = surgeon.load(out, small_mlp())
    assert [r.transform for r in surgeon.records(model)] == ["convert", "distill"]


def test_distill_keep_best_flags_reach_the_run(tmp_path) -> None:
    """--held-out sets the rows the kept state is scored on; --no-keep-best trains on every row and keeps the last
    state; a share outside (0, 0.5] is refused in one line naming the option's field."""
    import surgeon

    teacher, data, student = _files(tmp_path)
    held = tmp_path / "held.safetensors"
    code, _, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(data),
                        "--steps", "4", "--held-out", "0.25", "--checks", "2", "--warmup", "0.5", "-o", str(held))
    assert code == 0, err
    note = " ".join(surgeon.records(surgeon.load(held, small_mlp()))[-1].warnings)
    assert "on 50 rows" in note, note
    last = tmp_path / "last.safetensors"
    code, _, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(data),
                        "--steps", "4", "--no-keep-best", "-o", str(last))
    assert code == 0, err
    assert "rows" not in " ".join(surgeon.records(surgeon.load(last, small_mlp()))[-1].warnings)
    code, _, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(data),
                        "--held-out", "0.9", "-o", str(tmp_path / "bad.safetensors"))
    _one_line_error(code, err, "held_out")
    assert not (tmp_path / "bad.safetensors").exists()


def test_distill_bad_input_is_one_line(tmp_path) -> None:
    teacher, data, student = _files(tmp_path)
    other = tmp_path / "other.pt"
    torch.save(other_mlp().state_dict(), other)
    out = str(tmp_path / "kd.safetensors")
    code, _, err = _run("distill", str(student), "--teacher", str(other), "--teacher-arch", OTHER, "--arch", ARCH,
                        "--data", str(data), "--steps", "2", "-o", out)
    _one_line_error(code, err, "shape")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, inputs=np.zeros((10, 7), dtype=np.float32))
    code, _, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(wrong),
                        "-o", out)
    _one_line_error(code, err, "does not fit")
    empty = tmp_path / "empty.npz"
    np.savez(empty, inputs=np.zeros((0, 16), dtype=np.float32))
    code, _, err = _run("distill", str(student), "--teacher", str(teacher), "--arch", ARCH, "--data", str(empty),
                        "-o", out)
    _one_line_error(code, err, "empty")
    assert not (tmp_path / "kd.safetensors").exists()


def test_compare_table_json_png(tmp_path) -> None:
    teacher, data, _ = _files(tmp_path)
    labels = tmp_path / "y.npz"
    np.savez(labels, inputs=np.random.default_rng(0).integers(0, 5, 200))
    report, plot = tmp_path / "c.json", tmp_path / "c.png"
    code, stdout, err = _run("compare", str(teacher), "--arch", ARCH, "--data", str(data), "--labels", str(labels),
                             "--budgets", "0.25", "--kinds", "lowrank,fastfood", "--json-out", str(report),
                             "--plot", str(plot))
    assert code == 0, err
    assert "lowrank" in stdout and "fastfood" in stdout
    rows = json.loads(report.read_text())["rows"]
    assert {r["kind"] for r in rows} == {"lowrank", "fastfood"}
    assert plot.read_bytes()[:4] == b"\x89PNG"
    code, _, err = _run("compare", str(teacher), "--arch", ARCH, "--data", str(data), "--kinds", "butterfly")
    _one_line_error(code, err, "kinds")
