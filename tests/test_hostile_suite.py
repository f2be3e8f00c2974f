"""The standing hostile-input suite: files, forged safetensors, tampered recipes and aliases, code-running pickles
under every command and extension, bad arguments, signals, a full disk, races, integer/extreme/empty inputs.

Every CLI case runs the installed entry point (see :mod:`tests.hostile`) in a folder of its own and asserts: the
exit code, the number of stderr lines (one ``error:`` line for a failure), no traceback, no file left in the
output folder (the working directory) or the input folder, the inputs' hashes unchanged, and that no payload
ran. API cases assert the exception type, a one-line message naming the problem, and the same file checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import surgeon
from surgeon import zoo
from tests.hostile import (
    CHILD_ENV,
    Payload,
    Zygote,
    assert_clean_failure,
    entry_point,
    folder_state,
    payload_pickle,
    payload_torch_file,
    safetensors_bytes,
    split_safetensors,
    tampered,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks")

MARKER = "PAYLOAD_RAN"


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    runner = Zygote(tmp_path_factory.mktemp("zygote"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, bytes]:
    """Real files the hostile ones are made from: a self-describing state_dict and a surgeon checkpoint."""
    folder = tmp_path_factory.mktemp("assets")
    mlp = zoo.build_example("mlp")
    torch.save({"arch": "example:mlp", "state_dict": mlp.state_dict()}, folder / "mlp.pt")
    converted = surgeon.convert(mlp, linear="acdc", depth=2, seed=0)
    surgeon.save(converted, folder / "mlp.acdc.safetensors", metadata={"surgeon.arch": "example:mlp"})
    return {"mlp.pt": (folder / "mlp.pt").read_bytes(),
            "checkpoint": (folder / "mlp.acdc.safetensors").read_bytes()}


@dataclass
class Case:
    """One hostile CLI invocation: ``make(inputs, marker, assets)`` writes the input folder, returns the argv."""

    id: str
    make: Callable[[Path, Path, dict], list]
    code: int
    needles: tuple[str, ...] = ()
    stderr_lines: int = 1
    outputs: tuple[str, ...] = ()
    umask: int = 0o022
    check: Callable[[Path], None] | None = field(default=None, repr=False)
    stdout_has: tuple[str, ...] = ()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def model_file(inputs: Path, assets: dict) -> str:
    return write(inputs / "model.pt", assets["mlp.pt"])


def checkpoint_with(edit: Callable[[dict, dict], None]) -> Callable[[Path, Path, dict], list]:
    """A convert of a surgeon checkpoint whose tensors / metadata ``edit(tensors, metadata)`` tampered with."""
    def make(inputs: Path, marker: Path, assets: dict) -> list:
        blob = assets["checkpoint"]
        header, _ = split_safetensors(blob)
        tensors, metadata = load_safetensors(blob), dict(header["__metadata__"])
        edit(tensors, metadata)
        path = write(inputs / "ckpt.safetensors", save_safetensors(tensors, metadata))
        return ["convert", path, "-o", "o.safetensors"]
    return make


def forged(header: dict, data: bytes = bytes(16), **options) -> Callable[[Path, Path, dict], list]:
    def make(inputs: Path, marker: Path, assets: dict) -> list:
        path = write(inputs / "forged.safetensors", safetensors_bytes(header, data, **options))
        return ["convert", path, "--arch", "surgeon.zoo:MLP", "-o", "o.safetensors"]
    return make


def with_model(*argv: str) -> Callable[[Path, Path, dict], list]:
    """``argv`` with ``MODEL`` replaced by a real model file in the input folder."""
    def make(inputs: Path, marker: Path, assets: dict) -> list:
        path = model_file(inputs, assets)
        return [path if a == "MODEL" else a for a in argv]
    return make


def with_payload(*argv: str, name: str = "evil.pt", legacy: bool = False) -> Callable[[Path, Path, dict], list]:
    """``argv`` with ``EVIL`` replaced by a file whose unpickling would create the marker."""
    def make(inputs: Path, marker: Path, assets: dict) -> list:
        path = inputs / name
        if name.endswith(".npy"):
            np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
        elif legacy:
            path.write_bytes(payload_pickle(marker))
        else:
            payload_torch_file(path, marker)
        return [str(path) if a == "EVIL" else a for a in argv]
    return make


def named(name: str, data: bytes = b"") -> Callable[[Path, Path, dict], list]:
    def make(inputs: Path, marker: Path, assets: dict) -> list:
        path = inputs / name
        if data or name.endswith("empty.pt"):
            path.write_bytes(data)
        return ["convert", str(path), "-o", "o.safetensors"]
    return make


def set_recipe(value) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, metadata: dict) -> None:
        recipe = json.loads(metadata["surgeon.recipe"])
        metadata["surgeon.recipe"] = value if isinstance(value, str) else json.dumps(value(recipe))
    return edit


def set_meta(key: str, value: str) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, metadata: dict) -> None:
        metadata[key] = value
    return edit


def tie_different_shapes(tensors: dict, metadata: dict) -> None:
    del tensors["net.4.bias"]
    metadata["surgeon.aliases"] = json.dumps({"net.4.bias": "net.4.weight"})


def first_step(**changes):
    def change(recipe: list) -> list:
        recipe[0].update(changes)
        return recipe
    return change


def step_config(**changes):
    def change(recipe: list) -> list:
        recipe[0]["config"].update(changes)
        return recipe
    return change


def converting(case_id: str, flags: list[str], code: int, *needles: str) -> Case:
    """``surgeon convert MODEL FLAGS -o o.safetensors``."""
    return Case(case_id, with_model("convert", "MODEL", *flags, "-o", "o.safetensors"), code, needles)


def markup_module_names(inputs: Path) -> str:
    """A (trusted) pickled module whose layer names are rich markup and an emoji code."""
    model = torch.nn.Sequential()
    model.add_module("[/x]", torch.nn.Linear(64, 64))
    model.add_module(":b:", torch.nn.ReLU())
    torch.save(model, inputs / "named.pt")
    return str(inputs / "named.pt")


def yaml_payload(marker: Path) -> bytes:
    """A recipe whose loading with an unsafe YAML loader would create the marker."""
    code = f"open({str(marker)!r}, 'w')"
    return f'name: x\nmodel: !!python/object/apply:builtins.exec ["{code}"]\n'.encode()


def check_mode(mode: int) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        assert (out / "o.safetensors").stat().st_mode & 0o777 == mode
    return check


F32_2X2 = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}

CASES = [
    # --- files
    Case("missing-file", named("nope.pt"), 1, ("nope.pt", "no such file")),
    Case("empty-file", named("empty.pt"), 1, ("empty",)),
    Case("directory-as-model", lambda i, m, a: ["convert", str(i), "-o", "o.safetensors"], 1, ("directory",)),
    Case("garbage-pt", named("junk.pt", os.urandom(4096)), 1, ("junk.pt",)),
    Case("text-as-safetensors", named("notes.safetensors", b"hello, not a checkpoint\n" * 8), 1, ("corrupt",)),
    Case("truncated-checkpoint", lambda i, m, a: ["convert", write(i / "cut.safetensors", a["checkpoint"][:5000]),
                                                  "-o", "o.safetensors"], 1, ("truncated",)),
    Case("pt2-program", named("prog.pt2", b"PK\x03\x04 zip"), 1, ("not supported",)),
    Case("markup-in-file-name", named("[/x].pt"), 1, ("[/x].pt",)),
    Case("brackets-in-file-name", named("model[v2].pt"), 1, ("model[v2].pt: no such file",)),
    Case("newline-in-file-name", named("a\nb.pt"), 1, ("a\\nb.pt",)),
    # --- forged safetensors headers and offsets
    Case("header-length-huge", forged(F32_2X2, header_length=1 << 60), 1, ("corrupt",)),
    Case("header-length-zero", forged(F32_2X2, header_length=0), 1, ("corrupt",)),
    Case("header-not-json", lambda i, m, a: ["convert", write(i / "f.safetensors", b"\x10" + bytes(7) + b"{not json" +
                                                              b" " * 7), "--arch", "surgeon.zoo:MLP"], 1, ("corrupt",)),
    Case("offsets-past-end", forged({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1600]}}), 1,
         ("corrupt",)),
    Case("offsets-disagree-with-shape", forged({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}},
                                               bytes(8)), 1, ("corrupt",)),
    Case("overlapping-tensors", forged({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), 1,
         ("corrupt",)),
    Case("unknown-dtype", forged({"w": {"dtype": "X99", "shape": [2, 2], "data_offsets": [0, 16]}}), 1,
         ("corrupt",)),
    Case("shape-overflows", forged({"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}),
         1, ("corrupt",)),
    Case("metadata-not-strings", forged({**F32_2X2, "__metadata__": {"surgeon.recipe": 5}}), 1, ("corrupt",)),
    # --- tampered recipes, aliases and recorded architectures
    Case("recipe-not-json", checkpoint_with(set_recipe("[{not json")), 1, ("unreadable surgery recipe",)),
    Case("recipe-unknown-config-type", checkpoint_with(set_recipe(first_step(config_type="os.system"))), 1,
         ("unknown config type 'os.system'",)),
    Case("recipe-missing-module", checkpoint_with(set_recipe(first_step(selected=["net.99"]))), 1, ("net.99",)),
    Case("recipe-bad-depth", checkpoint_with(set_recipe(step_config(depth=-5))), 1, ("recipe step 1", "got -5")),
    Case("alias-to-missing-tensor", checkpoint_with(set_meta("surgeon.aliases", '{"net.9.weight": "nope"}')), 1,
         ("missing tensor",)),
    Case("alias-also-stored", checkpoint_with(set_meta("surgeon.aliases", '{"net.4.weight": "net.4.bias"}')), 1,
         ("also stored",)),
    Case("alias-map-not-object", checkpoint_with(set_meta("surgeon.aliases", "[1, 2]")), 1, ("malformed alias",)),
    Case("alias-ties-other-shape", checkpoint_with(tie_different_shapes), 1, ("different shapes",)),
    Case("recorded-arch-not-example", checkpoint_with(set_meta("surgeon.arch", "os:system")), 2,
         ("--arch os:system",)),
    # --- code-running pickles under every command and extension (never without --trust)
    Case("pickle-convert-pt", with_payload("convert", "EVIL", "-o", "o.safetensors"), 1, ("refusing",)),
    Case("pickle-report-pth", with_payload("report", "EVIL", name="evil.pth", legacy=True), 1, ("refusing",)),
    Case("pickle-export-bin", with_payload("export", "EVIL", "-o", "o.onnx", name="evil.bin"), 1, ("refusing",)),
    Case("pickle-noisify-ckpt", with_payload("noisify", "EVIL", "-o", "o.safetensors", name="evil.ckpt"), 1,
         ("refusing",)),
    Case("pickle-mollify-legacy", with_payload("mollify", "EVIL", "-o", "o.safetensors", legacy=True), 1,
         ("refusing",)),
    Case("pickle-as-baseline", with_payload("report", "example:mlp", "--baseline", "EVIL"), 1, ("refusing",)),
    Case("pickle-as-calibration", with_payload("convert", "example:mlp", "--init", "fit", "--calib", "EVIL",
                                               "-o", "o.safetensors"), 1, ("--calib",)),
    Case("pickle-in-npy-calibration", with_payload("convert", "example:mlp", "--init", "fit", "--calib", "EVIL",
                                                   "-o", "o.safetensors", name="evil.npy"), 1, ("--calib",)),
    Case("pickle-named-safetensors", with_payload("convert", "EVIL", "--arch", "surgeon.zoo:MLP", "-o",
                                                  "o.safetensors", name="evil.safetensors", legacy=True), 1,
         ("corrupt",)),
    Case("yaml-payload-recipe", lambda i, m, a: ["train", write(i / "evil.yaml", yaml_payload(m))], 1,
         ("constructor",)),
    Case("recipe-not-yaml", lambda i, m, a: ["train", write(i / "bad.yaml", b"a: [1, 2\n")], 1),
    Case("unknown-recipe", lambda i, m, a: ["train", "no_such_recipe"], 1, ("no recipe 'no_such_recipe'",)),
    # --- arguments: usage errors (exit 2) and failures (exit 1), nothing written
    converting("shape-zero", ["--input-shape", "0,3"], 2, "--input-shape", "entry 0"),
    converting("shape-not-integer", ["--input-shape", "1,x"], 2, "entry 'x'"),
    converting("shape-negative", ["--input-shape", "-1,3"], 2, "entry -1"),
    converting("shape-huge", ["--input-shape", "100000,100000"], 2, "elements"),
    converting("shape-mismatch", ["--input-shape", "2,5"], 1),
    converting("arch-emoji-code", ["--arch", "a:b:c"], 2, "'a:b:c'"),
    converting("include-markup", ["--include", "[/a]"], 1, "[/a]"),
    converting("include-invalid-regex", ["--exclude", "("], 2, "invalid regex"),
    Case("unknown-linear", with_model("convert", "MODEL", "--linear", "butterfly"), 2, ("--linear", "butterfly")),
    Case("unknown-format", with_model("export", "MODEL", "--format", "tflite"), 2, ("--format", "tflite", "--help")),
    Case("unknown-option", with_model("convert", "MODEL", "--nope"), 2, ("--nope",)),
    Case("missing-argument", lambda i, m, a: ["convert"], 2, ("missing argument",)),
    Case("unknown-command", lambda i, m, a: ["transmogrify"], 2, ("transmogrify",)),
    Case("depth-zero", with_model("convert", "MODEL", "--depth", "0"), 2, ("--depth",)),
    converting("arch-returns-no-module", ["--arch", "os:getcwd"], 2, "not a torch.nn.Module"),
    Case("output-wrong-suffix", with_model("convert", "MODEL", "-o", "o.txt"), 2, ("must end with",)),
    Case("output-is-input", with_model("convert", "MODEL", "-o", "MODEL"), 2, ("is the input",)),
    Case("output-dir-missing", with_model("convert", "MODEL", "-o", "no/such/o.safetensors"), 1, ("does not exist",)),
    Case("calibration-not-tensor", lambda i, m, a: ["convert", "example:mlp", "--init", "fit", "--calib",
                                                    write(i / "c.pt", b"nope"), "-o", "o.safetensors"], 1,
         ("--calib",)),
    Case("markup-in-module-names", lambda i, m, a: ["report", markup_module_names(i), "--trust", "--input-shape",
                                                    "1,64"], 0, stderr_lines=0, stdout_has=("│ [/x] ", "│ :b: ")),
    # --- modes: outputs honour the umask
    Case("umask-027", with_model("convert", "MODEL", "--depth", "2", "-o", "o.safetensors", "-q"), 0,
         stderr_lines=0, outputs=("o.safetensors",), umask=0o027, check=check_mode(0o640)),
    Case("umask-002", with_model("convert", "MODEL", "--depth", "2", "-o", "o.safetensors", "-q"), 0,
         stderr_lines=0, outputs=("o.safetensors",), umask=0o002, check=check_mode(0o664)),
]


def case_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    return inputs, out, tmp_path / MARKER


def assert_left_alone(inputs: Path, out: Path, marker: Path, before: dict, outputs: tuple[str, ...] = ()) -> None:
    assert folder_state(inputs) == before, "the input folder changed"
    assert sorted(folder_state(out)) == sorted(outputs), f"files left in the output folder: {sorted(folder_state(out))}"
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_case(case: Case, zygote: Zygote, assets: dict, tmp_path: Path) -> None:
    inputs, out, marker = case_folders(tmp_path)
    argv = case.make(inputs, marker, assets)
    before = folder_state(inputs)
    result = zygote.run(argv, cwd=out, umask=case.umask)
    assert result.code == case.code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(result.stderr_lines) == case.stderr_lines, result.stderr
    if case.code:
        assert_clean_failure(result, case.code, *case.needles)
    assert_left_alone(inputs, out, marker, before, case.outputs)
    if case.check:
        case.check(out)
    for text in case.stdout_has:
        assert text in result.stdout, result.stdout


def test_usage_errors_look_the_same_everywhere(zygote: Zygote, tmp_path: Path) -> None:
    """Parser errors and the commands' own usage errors: one ``error:`` line, exit 2, a pointer to --help."""
    results = zygote.run_many([{"argv": ["export", "example:mlp", "--format", "tflite"], "cwd": tmp_path},
                               {"argv": ["convert", "example:mlp", "--depth", "0"], "cwd": tmp_path}])
    for result in results:
        assert_clean_failure(result, 2)
    assert results[0].stderr_lines[0] == ("error: Invalid value for '--format' / '-f': Value error, 'tflite' is not "
                                          "one of 'onnx', 'safetensors'. (see surgeon export --help)")
    assert not os.listdir(tmp_path)


# --- races ------------------------------------------------------------------------------------------------------


def test_racing_converts_to_one_output(zygote: Zygote, assets: dict, tmp_path: Path) -> None:
    """Two converts to the same -o at once: one writes it, the other fails with one line; nothing replaced."""
    inputs, out, marker = case_folders(tmp_path)
    model = model_file(inputs, assets)
    before = folder_state(inputs)
    argv = ["convert", model, "--depth", "2", "-o", "o.safetensors", "-q"]
    results = zygote.run_many([{"argv": [*argv, "--seed", str(seed)], "cwd": out} for seed in (1, 2)])
    winners = [r for r in results if r.code == 0]
    losers = [r for r in results if r.code != 0]
    assert len(winners) == 1 and not winners[0].stderr_lines, [r.stderr for r in results]
    assert len(losers) == 1
    assert_clean_failure(losers[0], 1, "already exists")
    assert_left_alone(inputs, out, marker, before, ("o.safetensors",))
    _, metadata = surgeon.io.checkpoint.read_checkpoint(out / "o.safetensors")  # complete and readable
    assert "surgeon.recipe" in metadata


# --- a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def test_disk_full(zygote: Zygote, assets: dict, small_tmpfs: Path, tmp_path: Path) -> None:
    """A checkpoint (safetensors) and a state_dict (torch.save) that do not fit: one line naming the path."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    model = model_file(inputs, assets)
    before = folder_state(inputs)
    results = zygote.run_many([
        {"argv": ["convert", model, "-o", small_tmpfs / "o.safetensors"], "cwd": small_tmpfs},
        {"argv": ["example", "mlp", "-o", small_tmpfs / "m.pt"], "cwd": small_tmpfs}])
    for result, name in zip(results, ("o.safetensors", "m.pt")):
        assert_clean_failure(result, 1, f"no space left on device: {small_tmpfs / name}")
    assert_left_alone(inputs, small_tmpfs, tmp_path / MARKER, before)


def test_disk_full_through_the_api(small_tmpfs: Path) -> None:
    model = zoo.build_example("mlp")
    with pytest.raises(OSError) as caught:
        surgeon.save(model, small_tmpfs / "m.safetensors")
    assert caught.value.errno == 28 and caught.value.filename == str(small_tmpfs / "m.safetensors")
    assert not os.listdir(small_tmpfs)


# --- signals ----------------------------------------------------------------------------------------------------


def start(argv: list, cwd: Path, **options) -> subprocess.Popen:
    return subprocess.Popen([*entry_point(), *map(str, argv)], cwd=cwd, env={**os.environ, **CHILD_ENV},
                            stderr=subprocess.PIPE, text=True, **options)


def wait_until_handled(proc: subprocess.Popen, signum: int, timeout: float = 60.0) -> None:
    """Until ``proc`` catches ``signum`` (``SigCgt`` in /proc; where there is no /proc, a fixed 0.3 s)."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")),
                      "0")
        if int(caught, 16) & (1 << (signum - 1)):
            return
        time.sleep(0.001)
    raise AssertionError("the entry point never installed its signal handlers")


def finish(proc: subprocess.Popen) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_while_importing(signum: int, tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM) in the first second, while torch loads: one line, 128 + signal, no traceback."""
    proc = start(["convert", "example:mlp", "-o", "o.safetensors"], tmp_path, stdout=subprocess.DEVNULL)
    wait_until_handled(proc, signal.SIGTERM)  # the launcher's handlers are in place: it is importing the CLI
    proc.send_signal(signum)
    code, lines = finish(proc)
    assert code == 128 + signum, lines
    assert len(lines) == 1 and lines[0].startswith("error: interrupted") and "Traceback" not in lines[0], lines
    assert not os.listdir(tmp_path)


def test_sigterm_while_writing_leaves_no_temporary_file(zygote: Zygote, tmp_path: Path) -> None:
    """SIGTERM once the temporary output exists (AlexNet's 244 MB written as a checkpoint)."""
    result = zygote.interrupt(["export", "example:alexnet", "--format", "safetensors", "-o", "o.safetensors", "-q"],
                              tmp_path, lambda: any(name.endswith(".tmp") for name in os.listdir(tmp_path)),
                              signal.SIGTERM)
    assert result.code == 143, result.stderr
    assert result.stderr_lines == ["error: interrupted (SIGTERM); no output was written"], result.stderr
    assert not os.listdir(tmp_path)


def test_sigint_after_the_output_was_written_says_so(zygote: Zygote, tmp_path: Path) -> None:
    """With stdout a full FIFO, the command blocks printing its --json result after placing the file: Ctrl-C
    there must report the (complete) file, not claim that nothing was written."""
    fifo = tmp_path.parent / f"{tmp_path.name}.fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # both ends, so the child's open does not wait for a reader
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(holder, b"x" * 4096)
        result = zygote.interrupt(["convert", "example:mlp", "--depth", "2", "-o", "o.safetensors", "--json"],
                                  tmp_path, lambda: (tmp_path / "o.safetensors").exists(), signal.SIGINT,
                                  stdout=fifo)
    finally:
        os.close(holder)
    assert result.code == 130, result.stderr
    assert result.stderr_lines == ["error: interrupted (SIGINT) after o.safetensors was written (it is complete)"]
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]
    surgeon.io.checkpoint.read_checkpoint(tmp_path / "o.safetensors")


# --- the API: integer, extreme and empty inputs, tampered files, meta tensors -------------------------------------

LAYERS = {
    "acdc": lambda: surgeon.ACDCLinear(8, 8),
    "fastfood": lambda: surgeon.FastfoodLinear(8, 8),
    "noisy-hard-sigmoid": lambda: surgeon.NoisyHardSigmoid(),
    "noisy-hard-tanh": lambda: surgeon.NoisyHardTanh(),
    "mollified": lambda: surgeon.MollifiedActivation(),
    "stochastic-skip": lambda: surgeon.StochasticSkip(torch.nn.Identity()),
    "noisy-lstm": lambda: surgeon.NoisyLSTM(8, 4),
    "noisy-gru": lambda: surgeon.NoisyGRU(8, 4),
    "noisy-lstm-cell": lambda: surgeon.NoisyLSTMCell(8, 4),
    "noisy-gru-cell": lambda: surgeon.NoisyGRUCell(8, 4),
}


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=["int64", "bool"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_refuse_integer_inputs(name: str, dtype: torch.dtype) -> None:
    layer = LAYERS[name]()
    x = torch.ones(3, 2, 8).to(dtype) if "lstm" in name and "cell" not in name or name == "noisy-gru" \
        else torch.ones(2, 8).to(dtype)
    with pytest.raises(TypeError) as caught:
        layer(x)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and type(layer).__name__ in message and str(dtype) in message


@pytest.mark.parametrize("name", ["noisy-hard-sigmoid", "noisy-hard-tanh", "mollified"])
def test_noisy_units_stay_finite_on_extreme_inputs(name: str) -> None:
    """In training (noise drawn) and in eval mode (its expectation), out to the largest fp32 values."""
    layer = LAYERS[name]()
    x = torch.tensor([-3.4e38, -1e30, -1.0, 0.0, 1e-30, 1e30, 3.4e38])
    assert torch.isfinite(layer.train()(x)).all()
    y = layer.eval()(x)
    assert torch.isfinite(y).all(), y
    tame = torch.where(x.abs() > 1e20, torch.zeros_like(x), x)
    assert torch.equal(y[2:5], layer(tame)[2:5])  # elementwise: the extremes do not disturb their neighbours


def test_structured_layers_take_an_empty_batch() -> None:
    for name in ("acdc", "fastfood"):
        assert LAYERS[name]()(torch.empty(0, 8)).shape == (0, 8)


def test_saving_a_meta_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)
    with pytest.raises(surgeon.CheckpointError) as caught:
        surgeon.save(model, tmp_path / "m.safetensors")
    assert "meta device" in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_api_load_refuses_an_alias_that_is_also_stored(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    surgeon.save(model, tmp_path / "m.safetensors")
    forged_file = tmp_path / "m.safetensors"
    forged_file.write_bytes(tampered(forged_file.read_bytes(), lambda header: header["__metadata__"].update(
        {"surgeon.aliases": json.dumps({"1.weight": "0.weight"})})))
    before = folder_state(tmp_path)
    with pytest.raises(surgeon.CheckpointError) as caught:
        surgeon.load(forged_file, torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))
    assert "'1.weight' is also stored" in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert folder_state(tmp_path) == before


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """The hostile files would run their code if loaded unsafely, so "no payload ran" above means something."""
    import pickle

    import yaml

    markers = [tmp_path / f"ran{i}" for i in range(4)]
    pickle.loads(payload_pickle(markers[0]))
    payload_torch_file(tmp_path / "evil.pt", markers[1])
    torch.load(tmp_path / "evil.pt", weights_only=False)
    np.save(tmp_path / "evil.npy", np.array([Payload(markers[2])], dtype=object), allow_pickle=True)
    np.load(tmp_path / "evil.npy", allow_pickle=True)
    yaml.unsafe_load(yaml_payload(markers[3]))
    assert all(marker.exists() for marker in markers)
