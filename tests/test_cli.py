"""The surgeon CLI: real files, real models, bad input handled with one line and the right exit code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from surgeon.cli.app import app
from surgeon.zoo import MLP

runner = CliRunner()
SMALL_ARCH = "surgeon.zoo:MLP"  # 784-1024-1024-10


def run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    text = " ".join(lines).lower()
    for needle in needles:
        assert needle.lower() in text, stderr


@pytest.fixture
def state_dict_file(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(MLP().state_dict(), path)
    return path


def snapshot(path) -> bytes:
    return path.read_bytes()


def test_version_and_help_have_examples():
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("surgeon ")
    for command in ("convert", "report", "export", "noisify", "mollify", "bench", "train", "example"):
        code, out, _ = run(command, "--help")
        assert code == 0 and "Example: surgeon" in out, command


def test_convert_example_writes_checkpoint_and_report(tmp_path):
    target = tmp_path / "mlp.acdc.safetensors"
    code, out, err = run("convert", "example:mlp", "--linear", "acdc", "--depth", "4", "-o", str(target), "--json")
    assert code == 0, err
    assert target.exists()
    import json

    payload = json.loads(out)
    assert payload["output"]["bytes"] == target.stat().st_size
    # The report and the file agree: reload through the CLI and compare outputs with the library.
    code, out, err = run("report", str(target), "--json")
    assert code == 0, err


def test_convert_model_pt_as_written_in_the_readme(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run("example", "mlp", "-o", "model.pt")
    assert code == 0, err
    before = snapshot(tmp_path / "model.pt")
    code, out, err = run("convert", "model.pt", "--linear", "acdc", "--depth", "12")
    assert code == 0, err
    assert (tmp_path / "model.acdc.safetensors").exists()
    assert snapshot(tmp_path / "model.pt") == before, "the input must never be modified"
    # The written checkpoint reloads (its built-in architecture is recorded) and computes what convert built.
    code, out, err = run("export", "model.acdc.safetensors", "--format", "onnx", "-o", "model.onnx")
    assert code == 0, err
    assert "parity" in out


def test_state_dict_with_arch_and_fastfood(state_dict_file, tmp_path):
    target = tmp_path / "ff.safetensors"
    code, _, err = run("convert", str(state_dict_file), "--arch", SMALL_ARCH, "--linear", "fastfood",
                       "-o", str(target), "-q")
    assert code == 0, err
    from surgeon.io.checkpoint import load

    model = load(target, MLP())
    assert any(type(m).__name__ == "FastfoodLinear" for m in model.modules())


def test_pickled_module_refused_unless_trusted(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(MLP((64, 128, 128, 10)), path)
    code, _, err = run("convert", str(path), "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 1, "refusing", "--trust")
    assert not (tmp_path / "o.safetensors").exists()
    code, _, err = run("convert", str(path), "--trust", "--depth", "2", "--include", "net.0",
                       "-o", str(tmp_path / "o.pt"))
    assert code == 0, err
    converted = torch.load(tmp_path / "o.pt", weights_only=False)
    assert type(converted.net[0]).__name__ == "ACDCLinear"


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "directory"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("hello, I am a text file\n"), "not a readable"),
])
def test_bad_model_files(tmp_path, make, needle):
    path = tmp_path / "model.pt"
    make(path)
    code, _, err = run("convert", str(path), "--arch", SMALL_ARCH, "-o", str(tmp_path / "out.safetensors"))
    assert_one_line_error(code, err, 1, needle)
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_checkpoints(tmp_path, state_dict_file):
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(state_dict_file.read_bytes()[:1000])
    code, _, err = run("convert", str(truncated), "--arch", SMALL_ARCH, "-o", str(tmp_path / "a.safetensors"))
    assert_one_line_error(code, err, 1)
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in MLP().state_dict().items()}, str(good))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:5000])
    code, _, err = run("convert", str(corrupt), "--arch", SMALL_ARCH, "-o", str(tmp_path / "b.safetensors"))
    assert_one_line_error(code, err, 1)
    assert not list(tmp_path.glob("[ab].safetensors"))


def test_state_dict_that_does_not_fit_arch(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(MLP((8, 16, 4)).state_dict(), path)
    code, _, err = run("convert", str(path), "--arch", SMALL_ARCH, "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 1, "does not fit")


@pytest.mark.parametrize("arch, needle", [
    ("not an arch", "package.module:factory"),
    ("no_such_module_xyz:build", "cannot import"),
    ("surgeon.zoo:nothing_here", "no callable"),
    ("math:pi", "no callable"),
])
def test_bad_arch_strings(state_dict_file, tmp_path, arch, needle):
    code, _, err = run("convert", str(state_dict_file), "--arch", arch, "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 2, needle)


def test_state_dict_without_arch_says_what_to_do(state_dict_file, tmp_path):
    code, _, err = run("convert", str(state_dict_file), "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 2, "--arch")


def test_model_without_linear_layers(tmp_path):
    path = tmp_path / "conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).state_dict(), path)
    code, _, err = run("convert", str(path), "--arch", "tests.archs:conv_only", "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 1, "linear")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_selection_matching_nothing(tmp_path, flag):
    args = ["convert", "example:mlp", "-o", str(tmp_path / "o.safetensors")]
    if flag == "--include":
        code, _, err = run(*args, "--include", "nothing\\..*")
        assert_one_line_error(code, err, 1, "net.0")  # the error lists the candidates
    else:
        code, _, err = run(*args, "--exclude", "net\\..*")
        assert code != 0 or "excluded nothing" in err
        assert_one_line_error(code, err, 1)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("depth", ["0", "-3", "100000", "twelve"])
def test_bad_depths_are_usage_errors(tmp_path, depth):
    code, _, err = run("convert", "example:mlp", "--depth", depth, "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 2, "--depth")


def test_unknown_linear_is_usage_error(tmp_path):
    result = runner.invoke(app, ["convert", "example:mlp", "--linear", "butterfly", "-o", str(tmp_path / "o.st")])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "butterfly" in result.stderr


def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # Root ignores permission bits; /proc refuses new files to everyone.
    target_dir = locked if not os.access(locked, os.W_OK) else "/proc"
    try:
        code, _, err = run("convert", "example:mlp", "-o", os.path.join(target_dir, "o.safetensors"))
        assert_one_line_error(code, err, 1, "not writable")
    finally:
        locked.chmod(0o700)
    code, _, err = run("convert", "example:mlp", "-o", str(tmp_path / "missing" / "o.safetensors"))
    assert_one_line_error(code, err, 1, "does not exist")


def test_existing_output_needs_force(tmp_path):
    target = tmp_path / "o.safetensors"
    target.write_bytes(b"precious")
    code, _, err = run("convert", "example:mlp", "--depth", "2", "-o", str(target))
    assert_one_line_error(code, err, 1, "--force")
    assert target.read_bytes() == b"precious"
    code, _, err = run("convert", "example:mlp", "--depth", "2", "-o", str(target), "--force", "-q")
    assert code == 0, err and target.read_bytes() != b"precious"


def test_debug_shows_traceback(tmp_path):
    code, _, err = run("--debug", "convert", str(tmp_path / "missing.pt"), "--arch", SMALL_ARCH)
    os.environ.pop("SURGEON_DEBUG", None)
    assert code == 1


def test_pt2_is_refused_clearly(tmp_path):
    path = tmp_path / "prog.pt2"
    path.write_bytes(b"PK\x03\x04 not really")
    code, _, err = run("convert", str(path), "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 1, "not supported")


def test_bad_calibration_file(tmp_path):
    calib = tmp_path / "calib.pt"
    calib.write_text("nope")
    code, _, err = run("convert", "example:mlp", "--init", "fit", "--calib", str(calib),
                       "-o", str(tmp_path / "o.safetensors"))
    assert_one_line_error(code, err, 1, "--calib")


@pytest.mark.skipif(shutil.which("surgeon") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "surgeon")), reason="the surgeon entry point is not installed")
def test_installed_entry_point_and_sigint_leaves_no_partial_file(tmp_path):
    exe = shutil.which("surgeon") or os.path.join(os.path.dirname(sys.executable), "surgeon")
    done = subprocess.run([exe, "convert", "example:mlp", "--depth", "2", "-o", str(tmp_path / "a.safetensors"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.safetensors").exists()
    missing = subprocess.run([exe, "report", str(tmp_path / "nope.pt")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr

    target = tmp_path / "fit.safetensors"
    proc = subprocess.Popen([exe, "convert", "example:alexnet", "--init", "fit", "-o", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "loaded example:alexnet" in proc.stdout.readline()
        time.sleep(1.0)  # inside the fit of the first 9216x4096 layer
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not target.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_noisify_and_mollify_commands_write_loadable_checkpoints(tmp_path):
    from surgeon import load, records
    from surgeon.zoo import LSTMLanguageModel

    target = tmp_path / "lm.nah.safetensors"
    code, _, err = run("noisify", "example:lstm-lm", "--mode", "nah", "-o", str(target), "-q")
    assert code == 0, err
    model = load(target, LSTMLanguageModel())
    kinds = {c.new for c in records(model)[-1].changes}
    assert {"NoisyLSTM", "NoisyHardTanh"} <= kinds
    tokens = torch.randint(0, 1000, (2, 7))
    assert torch.isfinite(model.eval()(tokens)).all()

    target = tmp_path / "mlp.mollified.safetensors"
    code, _, err = run("mollify", "example:mlp", "-o", str(target), "--json")
    assert code == 0, err
    model = load(target, MLP())
    assert any(type(m).__name__ == "StochasticSkip" for m in model.modules())

    code, _, err = run("noisify", "example:mlp", "-o", str(tmp_path / "none.safetensors"))
    assert_one_line_error(code, err, 1, "sigmoid", "tanh")


def test_train_runs_a_quick_recipe_and_rejects_unknown_ones(tmp_path):
    import json

    out_dir = tmp_path / "run"
    code, out, err = run("train", "alexnet_fc_acdc", "--quick", "--out", str(out_dir), "--json")
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (out_dir / "alexnet_fc_acdc.png").stat().st_size > 0
    assert json.loads(out)["recipe"] == metrics["recipe"] == "alexnet_fc_acdc"
    code, _, err = run("train", "no_such_recipe", "--quick", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, 1, "no_such_recipe")


def test_bench_cpu_rows_as_json():
    code, out, err = run("bench", "--device", "cpu", "--sizes", "256", "--batch", "4", "--depth", "2",
                         "--repeats", "1", "--json", "-q")
    assert code == 0, err
    rows = json.loads(out)
    assert rows and all(r["candidate_ms"] > 0 and r["baseline_ms"] > 0 for r in rows)
    assert any("depth 2" in r["candidate"] for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_bench_cuda_without_a_gpu_is_one_line():
    code, _, err = run("bench", "--device", "cuda", "--sizes", "512")
    assert_one_line_error(code, err, 1, "cuda")


@pytest.mark.parametrize("args,needle", [(("--dtypes", "fp8"), "--dtypes"), (("--depth", "0"), "--depth"),
                                         (("--sizes", "x"), "sizes")])
def test_bench_bad_options(args, needle):
    code, _, err = run("bench", *args)
    assert_one_line_error(code, err, 2, needle)


def test_bench_resources_needs_no_gpu():
    from tests.test_kernels_resources import _tools_present

    if not _tools_present():
        pytest.skip("triton's NVIDIA tools are missing")
    code, out, err = run("bench", "--resources", "--sizes", "256", "--gpu-arch", "90", "--json", "-q")
    assert code == 0, err
    rows = json.loads(out)
    assert {r["kernel"] for r in rows} == {"acdc_fwd", "acdc_bwd", "fastfood_fwd", "fastfood_bwd"}
    assert all(r["fits"] and r["arch"] == 90 and r["size"] == 256 for r in rows)
