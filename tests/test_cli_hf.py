"""The CLI on Hugging Face folders (MODEL and ``-o folder/ --format hf``) and ``convert --targets``.

Models are tiny transformers configs built offline and written with transformers' own ``save_pretrained``; the
CLI's output is judged against the same conversion done in-process (bit-exact), and against parameter counts
taken from the models themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch

import surgeon
from tests.hostile import Zygote, assert_clean_failure, folder_state
from tests.test_cli import run

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TOKENS = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(3))


def gpt2_config() -> transformers.GPT2Config:
    return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=96, n_positions=16, bos_token_id=0,
                                   eos_token_id=0)


def plain_gpt2_folder(folder: Path) -> Path:
    """A folder exactly as transformers writes it (no surgeon metadata)."""
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(gpt2_config()).eval().save_pretrained(folder)
    return folder


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS).logits


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return plain_gpt2_folder(tmp_path_factory.mktemp("models") / "gpt2")


def test_convert_a_folder_to_a_folder_and_to_a_file(gpt2: Path, tmp_path: Path) -> None:
    before = folder_state(gpt2)
    code, _, err = run("convert", str(gpt2), "--linear", "fastfood", "--seed", "0", "-o", f"{tmp_path}/ff/", "-q")
    assert code == 0, err
    code, _, err = run("convert", str(gpt2), "--linear", "fastfood", "--seed", "0", "-o",
                       str(tmp_path / "ff.safetensors"), "-q")
    assert code == 0, err
    assert folder_state(gpt2) == before                     # the input folder is untouched
    assert sorted(os.listdir(tmp_path / "ff")) == ["config.json", "model.safetensors", "surgeon_recipe.json"]
    # the same conversion in-process, from transformers' own loading of the input
    original = transformers.GPT2LMHeadModel.from_pretrained(gpt2, local_files_only=True).eval()
    expected = surgeon.convert(original, "fastfood", seed=0)
    assert all(change.old.startswith("Conv1D") for change in surgeon.records(expected)[-1].changes)
    again = surgeon.from_pretrained(tmp_path / "ff")
    assert type(again) is transformers.GPT2LMHeadModel
    assert torch.equal(logits(again), logits(expected))
    from_file = surgeon.load(tmp_path / "ff.safetensors", transformers.GPT2LMHeadModel(gpt2_config()))
    assert torch.equal(logits(from_file), logits(expected))
    assert not torch.equal(logits(again), logits(original))  # it really was converted


def test_report_of_a_folder_compares_with_its_original_architecture(gpt2: Path, tmp_path: Path) -> None:
    code, _, err = run("convert", str(gpt2), "--depth", "2", "--seed", "0", "--format", "hf", "-o",
                       str(tmp_path / "small"), "-q")
    assert code == 0, err
    code, out, err = run("report", str(tmp_path / "small"), "--json", "--input-shape", "1,8")
    assert code == 0, err
    payload = json.loads(out)
    fresh = transformers.GPT2LMHeadModel(gpt2_config())
    small = surgeon.from_pretrained(tmp_path / "small")
    assert payload["baseline"]["total"]["params"] == sum(p.numel() for p in fresh.parameters())
    assert payload["total"]["params"] == sum(p.numel() for p in small.parameters()) < payload["baseline"]["total"][
        "params"]
    assert payload["total"]["flops"] > 0                       # token ids, not floats, went through the model
    code, out, err = run("report", str(gpt2), "--json")     # a plain folder: no surgery, no baseline
    assert code == 0, err
    assert json.loads(out)["total"]["params"] == sum(p.numel() for p in fresh.parameters())


def test_default_folder_output_and_force_replace_the_whole_folder(gpt2: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("convert", str(gpt2), "--depth", "2", "--format", "hf", "-q")
    target = gpt2.parent / "gpt2.acdc"                      # beside the input folder, never inside it
    assert code == 0, err
    try:
        assert surgeon.records(surgeon.from_pretrained(target))[-1].transform == "convert"
        (target / "stale.txt").write_text("from before")
        code, _, err = run("convert", str(gpt2), "--depth", "3", "--format", "hf", "-q")
        assert_clean_failure_text(code, err, 1, "already exists")
        assert (target / "stale.txt").exists()
        code, _, err = run("convert", str(gpt2), "--depth", "3", "--format", "hf", "--force", "-q")
        assert code == 0, err
        assert sorted(os.listdir(target)) == ["config.json", "model.safetensors", "surgeon_recipe.json"]
        assert surgeon.records(surgeon.from_pretrained(target))[-1].config["depth"] == 3
        assert not [name for name in os.listdir(gpt2.parent) if name.startswith(".surgeon-")]
    finally:
        import shutil

        shutil.rmtree(target, ignore_errors=True)


def assert_clean_failure_text(code: int, err: str, expected: int, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_targets_conv1x1_converts_the_pointwise_convolutions(tmp_path: Path) -> None:
    from tests.archs import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small().eval()
    torch.save(model.state_dict(), tmp_path / "mnet.pt")
    common = ["--arch", "tests.archs:mobilenet_v3_small", "--depth", "2", "--seed", "0", "--input-shape",
              "2,3,32,32", "-q"]
    code, _, err = run("convert", str(tmp_path / "mnet.pt"), "--targets", "conv1x1", *common, "-o",
                       str(tmp_path / "pw.safetensors"))
    assert code == 0, err
    # what the default policy selects, counted from the model itself: 1x1, stride 1, no padding, groups 1,
    # both channel counts at least min_features (64)
    pointwise = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0) and m.groups == 1
                 and min(m.in_channels, m.out_channels) >= 64]
    loaded = surgeon.load(tmp_path / "pw.safetensors", mobilenet_v3_small())
    record = surgeon.records(loaded)[-1]
    assert record.config["targets"] == ["conv1x1"]
    # the last candidate counts as the output layer and stays dense (skip_output, the default policy)
    assert sorted(record.selected) == sorted(pointwise[:-1]) and len(pointwise) > 10
    assert [s.name for s in record.skipped if "output layer" in s.reason] == pointwise[-1:]
    expected = surgeon.convert(model, "acdc", depth=2, seed=0, targets=("conv1x1",))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected.eval()(x))
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    # without --targets (linear only) no convolution is touched; linear,conv1x1 takes both
    code, _, err = run("convert", str(tmp_path / "mnet.pt"), *common, "-o", str(tmp_path / "lin.safetensors"))
    assert code == 0, err
    assert not set(surgeon.records(surgeon.load(tmp_path / "lin.safetensors", mobilenet_v3_small()))[-1].selected) \
        & set(pointwise)
    code, _, err = run("convert", str(tmp_path / "mnet.pt"), "--targets", "linear,conv1x1", *common, "-o",
                       str(tmp_path / "both.safetensors"))
    assert code == 0, err
    both = surgeon.records(surgeon.load(tmp_path / "both.safetensors", mobilenet_v3_small()))[-1]
    assert set(pointwise) < set(both.selected) and both.config["targets"] == ["linear", "conv1x1"]


# --- bad input, through the installed entry point (see tests.hostile) ------------------------------------------


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    runner = Zygote(tmp_path_factory.mktemp("zygote"))
    yield runner
    runner.close()


def copy_folder(source: Path, target: Path, *, drop: tuple[str, ...] = (), edit_config=None) -> str:
    target.mkdir()
    for name in os.listdir(source):
        if name not in drop:
            (target / name).write_bytes((source / name).read_bytes())
    if edit_config is not None:
        config = json.loads((target / "config.json").read_text())
        edit_config(config)
        (target / "config.json").write_text(json.dumps(config))
    return str(target)


def unknown_model_type(config: dict) -> None:
    config.update(model_type="my-remote-model", auto_map={"AutoModel": "modeling_evil.EvilModel"})


def pickled_weights(inputs: Path, gpt2: Path) -> str:
    folder = copy_folder(gpt2, inputs / "binonly", drop=("model.safetensors",))
    (inputs / "binonly" / "pytorch_model.bin").write_bytes(b"not even read")
    return folder


def truncated_weights(inputs: Path, gpt2: Path) -> str:
    folder = copy_folder(gpt2, inputs / "cut")
    blob = (inputs / "cut" / "model.safetensors").read_bytes()
    (inputs / "cut" / "model.safetensors").write_bytes(blob[:3000])
    return folder


# (id, make(inputs, gpt2) -> argv run in the output folder, exit code, needle); "OUT" is the output folder itself
BAD = [
    ("not-a-hf-folder", lambda i, g: ["convert", copy_folder(g, i / "x", drop=("config.json",)), "-o", "o/"], 1,
     "has no config.json"),
    ("unknown-model-type", lambda i, g: ["convert", copy_folder(g, i / "x", edit_config=unknown_model_type),
                                         "-o", "o/"], 1, "my-remote-model"),
    ("missing-weights", lambda i, g: ["convert", copy_folder(g, i / "x", drop=("model.safetensors",)),
                                      "-o", "o/"], 1, "no model.safetensors"),
    ("pickled-weights-only", lambda i, g: ["convert", pickled_weights(i, g), "-o", "o/"], 1, "pytorch_model.bin"),
    ("truncated-weights", lambda i, g: ["convert", truncated_weights(i, g), "-o", "o/"], 1, "truncated"),
    ("output-inside-input", lambda i, g: ["convert", copy_folder(g, i / "x"), "-o", str(i / "x" / "sub") + "/"], 2,
     "overlap"),
    ("hf-output-of-non-transformers", lambda i, g: ["convert", "example:mlp", "-o", "o/"], 2, "transformers model"),
    ("hf-format-with-file-suffix", lambda i, g: ["convert", copy_folder(g, i / "x"), "--format", "hf", "-o",
                                                 "o.safetensors"], 2, "writes a folder"),
    ("arch-with-a-folder", lambda i, g: ["convert", copy_folder(g, i / "x"), "--arch", "surgeon.zoo:MLP", "-o",
                                         "o/"], 2, "drop --arch"),
    ("unknown-target", lambda i, g: ["convert", copy_folder(g, i / "x"), "--targets", "linear,conv3x3", "-o",
                                     "o/"], 2, "--targets"),
    ("empty-targets", lambda i, g: ["convert", copy_folder(g, i / "x"), "--targets", "", "-o", "o/"], 2,
     "--targets"),
    ("no-1x1-convs", lambda i, g: ["convert", copy_folder(g, i / "x"), "--targets", "conv1x1", "-o", "o/"], 1,
     "nothing to replace"),
]


@pytest.mark.parametrize("make, code, needle", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_folder_input(make, code: int, needle: str, zygote: Zygote, gpt2: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    argv = make(inputs, gpt2)
    before = folder_state(inputs)
    result = zygote.run(argv, cwd=out, env=OFFLINE)
    assert_clean_failure(result, code, needle)
    assert folder_state(inputs) == before and not os.listdir(out), os.listdir(out)


def test_existing_output_folder_is_never_clobbered(zygote: Zygote, gpt2: Path, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    (tmp_path / "f").write_text("a file")
    results = zygote.run_many([{"argv": ["convert", str(gpt2), "-o", "o/"], "cwd": tmp_path, "env": OFFLINE},
                               {"argv": ["convert", str(gpt2), "--format", "hf", "-o", "f", "--force"],
                                "cwd": tmp_path, "env": OFFLINE}])
    assert_clean_failure(results[0], 1, "already exists; pass --force")
    assert_clean_failure(results[1], 1, "is not a folder")
    assert folder_state(tmp_path) == {"o": "folder", "o/keep.txt": folder_state(tmp_path)["o/keep.txt"],
                                      "f": folder_state(tmp_path)["f"]}
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine" and (tmp_path / "f").read_text() == "a file"


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o027, 0o750, 0o640), (0o002, 0o775, 0o664)])
def test_folder_output_honours_the_umask(umask: int, folder_mode: int, file_mode: int, zygote: Zygote, gpt2: Path,
                                         tmp_path: Path) -> None:
    result = zygote.run(["convert", str(gpt2), "--depth", "2", "-o", "o/", "-q"], cwd=tmp_path, umask=umask,
                        env=OFFLINE)
    assert result.code == 0 and not result.stderr_lines, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["o"]
    assert (tmp_path / "o").stat().st_mode & 0o777 == folder_mode
    assert {(tmp_path / "o" / name).stat().st_mode & 0o777 for name in os.listdir(tmp_path / "o")} == {file_mode}




# --- the folder placement itself (surgeon.io.atomic) --------------------------------------------------------------


def write_two_files(folder: str) -> None:
    Path(folder, "a.json").write_text("{}")
    Path(folder, "b.bin").write_bytes(b"new")


def test_an_interrupted_folder_write_leaves_nothing(tmp_path: Path) -> None:
    from surgeon.io.atomic import write_folder_atomically

    def interrupted(folder: str) -> None:
        write_two_files(folder)
        raise KeyboardInterrupt   # what a signal raises mid-write (a BaseException)

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(tmp_path / "new", interrupted, overwrite=False)
    assert not os.listdir(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(tmp_path / "old", interrupted, overwrite=True)
    assert folder_state(tmp_path) == {"old": "folder", "old/keep": folder_state(tmp_path)["old/keep"]}


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "without-renameat2"])
def test_folder_placement_never_merges_and_force_swaps(renameat2: bool, tmp_path: Path, monkeypatch) -> None:
    from surgeon.io import atomic
    from surgeon.io.atomic import _rename_noreplace, write_folder_atomically

    if not renameat2:   # a libc or file system without it: the mkdir / two-rename fallbacks
        monkeypatch.setattr(atomic, "_renameat2", lambda tmp, path, flags: None)
    (tmp_path / "o").mkdir()             # even an empty folder, which a plain rename would replace
    with pytest.raises(FileExistsError):
        write_folder_atomically(tmp_path / "o", write_two_files, overwrite=False)
    assert os.listdir(tmp_path) == ["o"] and not os.listdir(tmp_path / "o")
    (tmp_path / "o" / "stale").write_text("x")
    write_folder_atomically(tmp_path / "o", write_two_files, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["o"] and sorted(os.listdir(tmp_path / "o")) == ["a.json", "b.bin"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("moved")
    with pytest.raises(FileExistsError):
        _rename_noreplace(str(tmp_path / "src"), str(tmp_path / "o"))
    _rename_noreplace(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert (tmp_path / "dst" / "f").read_text() == "moved" and not (tmp_path / "src").exists()


def test_export_a_converted_gpt2_folder_to_onnx(gpt2: Path, tmp_path: Path) -> None:
    """GPT-2 needs the dynamo exporter (its mask code calls aten::diff); the failed TorchScript attempt must not
    dump its IR graph on the user's terminal, and the file must keep the compression (debug metadata dropped)."""
    small = f"{tmp_path}/small/"
    code, _, err = run("convert", str(gpt2), "--linear", "acdc", "--depth", "2", "--seed", "0", "-o", small, "-q")
    assert code == 0, err
    launcher = [sys.executable, "-c", "import surgeon_launcher, sys; sys.exit(surgeon_launcher.main())"]
    done = subprocess.run([*launcher, "export", small, "--format", "onnx", "--input-shape", "2,9", "-o",
                           str(tmp_path / "g.onnx"), "--json"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **OFFLINE})
    assert done.returncode == 0, done.stderr
    assert "graph" not in done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["exporter"] == "dynamo" and summary["passed"] and summary["within_size_limit"]
    session = onnxruntime.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    expected = logits(surgeon.from_pretrained(small))
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: TOKENS.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
