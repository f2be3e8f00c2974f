"""Regression tests of the ten defects of issue 13, one (or a few) each, in-process where a subprocess is not the
point. The entry-point versions live in the standing suite, ``tests/test_hostile_suite.py``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import surgeon
from surgeon.cli.app import app
from surgeon.cli.failures import Interrupted, UsageError, install_signal_handlers, interrupted_message
from surgeon.cli.files import check_output, forget_outputs
from surgeon.cli.options import parse_shape
from surgeon.cli.output import Output
from surgeon.io.atomic import _rename_noreplace, write_atomically

runner = CliRunner()


def invoke(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.save({"arch": "example:mlp", "state_dict": surgeon.zoo.build_example("mlp").state_dict()}, path)
    return path


# 1. A failing command leaves its output file.
@pytest.mark.parametrize("shape", ["0,3", "1,x", "-1,3", "100000,100000"])
def test_defect_01_bad_input_shape_leaves_no_output_and_a_retry_works(model_file: Path, tmp_path: Path,
                                                                         shape: str) -> None:
    target = tmp_path / "x.safetensors"
    code, lines = invoke("convert", model_file, "--input-shape", shape, "-o", target)
    assert code == 2 and len(lines) == 1 and "--input-shape" in lines[0], lines
    assert not target.exists()
    code, lines = invoke("convert", model_file, "--depth", "2", "--input-shape", "2,784", "-o", target, "-q")
    assert code == 0 and not lines and target.exists(), lines


def test_defect_01_report_failure_after_the_transform_leaves_no_output(model_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    code, lines = invoke("convert", model_file, "--depth", "2", "--input-shape", "2,5", "-o", target)
    assert code == 1 and len(lines) == 1, lines
    assert sorted(os.listdir(tmp_path)) == ["mlp.pt"]


# 2. Error text rendered as rich markup.
@pytest.mark.parametrize("name", ["[/x].pt", "model[v2].pt", "[bold]b[/bold].pt", ":b: and :smile:.pt"])
def test_defect_02_file_names_are_printed_as_typed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    code, lines = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert code == 1 and lines == [f"error: {path}: no such file"], lines


def test_defect_02_regexes_and_arch_specs_are_printed_as_typed(model_file: Path, tmp_path: Path) -> None:
    code, lines = invoke("convert", model_file, "--include", "[/a]", "-o", tmp_path / "o.safetensors")
    assert code == 1 and len(lines) == 1 and "include='[/a]'" in lines[0], lines
    code, lines = invoke("convert", model_file, "--arch", "a:b:c", "-o", tmp_path / "o.safetensors")
    assert code == 2 and len(lines) == 1 and "'a:b:c'" in lines[0] and "\U0001f171" not in lines[0], lines


def test_defect_02_output_never_interprets_markup_or_emoji(capsys) -> None:
    out = Output()
    out.error("[/x] [red]y[/red] :b: a\nb")
    out.warn("[/w]")
    out.info("[bold]i[/bold] :smile:")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: [/x] [red]y[/red] :b: a\\nb", "warning: [/w]"]
    assert captured.out.splitlines() == ["[bold]i[/bold] :smile:"]


# 3. SIGTERM during a write leaves temp files.
@pytest.fixture
def cli_signal_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    install_signal_handlers()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_defect_03_signal_inside_a_write_removes_the_temporary_file(tmp_path: Path, cli_signal_handlers,
                                                                    signum: int) -> None:
    def write_then_get_signalled(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), signum)

    with pytest.raises(Interrupted) as caught:
        write_atomically(tmp_path / "o.safetensors", write_then_get_signalled)
    assert caught.value.exit_code == 128 + signum
    assert not os.listdir(tmp_path)


# 4. Ctrl-C after the output was written says "no output was written".
def test_defect_04_interrupt_message_tells_whether_the_output_exists(tmp_path: Path) -> None:
    target = str(tmp_path / "o.safetensors")
    forget_outputs()
    check_output(target, force=False)
    assert interrupted_message(Interrupted(signal.SIGINT)) == ("interrupted (SIGINT); no output was written", 130)
    surgeon.save(torch.nn.Linear(2, 2), target)
    message, code = interrupted_message(Interrupted(signal.SIGTERM))
    assert code == 143 and message == f"interrupted (SIGTERM) after {target} was written (it is complete)"


def test_defect_04_a_forced_overwrite_not_yet_done_is_not_reported_as_written(tmp_path: Path) -> None:
    target = tmp_path / "old.safetensors"
    target.write_bytes(b"the previous file")
    forget_outputs()
    check_output(str(target), force=True)
    assert interrupted_message(KeyboardInterrupt())[0] == "interrupted (SIGINT); no output was written"


# 5. Ctrl-C during the imports: see test_hostile_suite.py::test_signal_while_importing (needs a fresh process).

# 6. Integer inputs accepted and silently truncated.
def test_defect_06_integer_inputs_are_refused_not_truncated() -> None:
    with pytest.raises(TypeError, match="ACDCLinear expects a floating-point input, got torch.int64"):
        surgeon.ACDCLinear(64, 64)(torch.randint(0, 5, (2, 64)))
    with pytest.raises(TypeError, match="NoisyHardSigmoid .* torch.int64"):
        surgeon.NoisyHardSigmoid()(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="MollifiedActivation .* torch.int32"):
        surgeon.MollifiedActivation()(torch.zeros(4, dtype=torch.int32))
    assert surgeon.NoisyHardSigmoid().eval()(torch.zeros(4)).eq(0.5).all()  # the float input it should have had


# 7. A tampered alias entry accepted: see test_hostile_suite.py::test_api_load_refuses_an_alias_that_is_also_stored
#    and the CLI cases alias-also-stored, alias-ties-other-shape, alias-map-not-object, alias-to-missing-tensor.

# 8. --input-shape 1,x read as (1,).
@pytest.mark.parametrize(("text", "needle"), [("1,x", "entry 'x'"), ("1x3", "entry '1x3'"), ("1,,3", "entry ''"),
                                              ("0,3", "entry 0"), ("-1,3", "entry -1"), ("", "entry ''"),
                                              ("100000,100000", "10,000,000,000 elements")])
def test_defect_08_malformed_shapes_are_usage_errors_naming_the_entry(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_shape(text)
    assert needle in str(caught.value) and "--input-shape" in str(caught.value)


def test_defect_08_good_shapes() -> None:
    assert parse_shape(" 1, 3 ,224,224") == (1, 3, 224, 224)
    assert parse_shape(None) is None


# 9. Two converts racing to the same -o both succeed.
def test_defect_09_placement_never_replaces_a_file_created_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "o.safetensors"

    def write_while_another_process_creates_the_output(tmp: str) -> None:
        Path(tmp).write_bytes(b"ours")
        target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        write_atomically(target, write_while_another_process_creates_the_output, overwrite=False)
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["o.safetensors"]
    write_atomically(target, lambda tmp: Path(tmp).write_bytes(b"forced"), overwrite=True)
    assert target.read_bytes() == b"forced" and os.listdir(tmp_path) == ["o.safetensors"]


def test_defect_09_rename_noreplace_fallback(tmp_path: Path) -> None:
    """The placement used where hard links are not supported."""
    source, target = tmp_path / "a.tmp", tmp_path / "b"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        _rename_noreplace(str(source), str(target))
    assert target.read_bytes() == b"old" and source.exists()
    target.unlink()
    _rename_noreplace(str(source), str(target))
    assert target.read_bytes() == b"new" and not source.exists()


# 10. Outputs created 0600; disk-full and meta-device messages.
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_defect_10_outputs_honour_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        surgeon.save(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
        write_atomically(tmp_path / "m.pt", lambda tmp: torch.save({"w": torch.ones(1)}, tmp))
    finally:
        os.umask(previous)
    for name in ("m.safetensors", "m.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_defect_10_meta_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(surgeon.CheckpointError, match="'0.weight': it is on the meta device"):
        surgeon.save(model, tmp_path / "m.safetensors")
    assert not os.listdir(tmp_path)
    # Disk full: test_hostile_suite.py::test_disk_full and ::test_disk_full_through_the_api (need a tmpfs).
