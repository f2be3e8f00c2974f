"""The CPU speed paths compute the same maps: the fp16 ONNX files, the thread rule, the inference bench (oracles:
torch in fp32/fp16 and fp64, onnxruntime)."""

import onnxruntime as ort
import pytest
import torch
from torch import nn

from surgeon.io.onnx_export import export_onnx
from surgeon.layers import ACDCLinear, FastfoodLinear


def _float_initializer_bytes(path) -> int:
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer if t.data_type in floats)


def test_fp16_export_halves_the_numbers_and_matches_torch_fp16(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(ACDCLinear(1000, 1024, depth=6), nn.ReLU(), FastfoodLinear(1024, 512), nn.Linear(512, 10))
    x = torch.randn(5, 1000)
    full = export_onnx(model, x, tmp_path / "fp32.onnx")
    half = export_onnx(model, x, tmp_path / "fp16.onnx", dtype=torch.float16)
    assert half.passed and half.max_rel_error <= 1e-2 and half.tolerance == 1e-2
    assert half.file_bytes < 0.7 * full.file_bytes
    # The numbers themselves halve exactly; the graph (~700 nodes and their names) does not shrink.
    assert _float_initializer_bytes(tmp_path / "fp16.onnx") * 2 == _float_initializer_bytes(tmp_path / "fp32.onnx")
    assert model[0].a.dtype == torch.float32  # the caller's model is not converted
    session = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    got = torch.from_numpy(session.run(None, {"input_0": x.half().numpy()})[0]).float()
    with torch.no_grad():
        reference = model(x)  # the fp32 model: fp16 storage costs at most a few 1e-3 relative
    assert ((got - reference).abs().max() / reference.abs().max()).item() < 1e-2


def test_cascade_on_many_rows_hands_threads_to_pocketfft_and_gives_them_back():
    from surgeon.ops.acdc import acdc_cascade_ref

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = ACDCLinear(512, 512, depth=3, activation="tanh")
        x = torch.randn(128, 512, requires_grad=True)  # 2^16 elements: above the serial threshold
        y = layer(x)
        y.square().sum().backward()
        assert torch.get_num_threads() == 2
        x64 = x.detach().double().requires_grad_()
        params = [p.detach().double().requires_grad_() for p in (layer.a, layer.d, layer.b)]
        expected = acdc_cascade_ref(x64, *params, layer.perms, "tanh")
        expected.square().sum().backward()
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.d.grad.double(), params[1].grad, rtol=1e-3, atol=1e-3)
    finally:
        torch.set_num_threads(previous)


def test_bench_inference_rows_cover_every_layer_and_runtime():
    import json

    from typer.testing import CliRunner

    import surgeon
    from surgeon.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--inference", "--sizes", "256", "--batches", "1,3", "--repeats", "1",
                                      "--json", "-q"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    layers = {"ACDC-12", "ACDC-4", "Fastfood"} | ({"low-rank"} if hasattr(surgeon, "LowRankLinear") else set())
    cells = {(r["batch"], r["layer"], r["runtime"]) for r in rows}
    floor = {(b, "24 DCTs of ACDC-12", "torch") for b in (1, 3)}
    assert cells == {(b, name, rt) for b in (1, 3) for name in layers for rt in ("torch", "onnxruntime")} | floor
    for row in rows:
        assert row["n"] == 256 and row["ms"] > 0 and row["speedup"] == pytest.approx(row["dense_ms"] / row["ms"])
        assert (row["vs_torch"] is not None) == (row["runtime"] == "onnxruntime")


def test_bench_inference_compares_a_forced_dct_engine_in_torch_only():
    import json

    from typer.testing import CliRunner

    from surgeon.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--inference", "--sizes", "32", "--batches", "2", "--repeats", "1",
                                      "--runtimes", "torch", "--dct-engine", "scipy", "--json", "-q"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["runtime"] for r in rows} == {"torch"}
    assert {"ACDC-12 [scipy DCT]", "ACDC-4 [scipy DCT]", "ACDC-12"} <= {r["layer"] for r in rows}
    assert not any("Fastfood [" in r["layer"] for r in rows), "only the ACDC layers transform with DCTs"
    from surgeon.bench.inference import InferenceRow, engine_table

    table = engine_table([InferenceRow(**r) for r in rows]).splitlines()
    assert len(table) == 4 and table[2].startswith("| 32 | ACDC-12 [scipy DCT] → default | ")
    forced = next(r for r in rows if r["layer"] == "ACDC-12 [scipy DCT]")
    default = next(r for r in rows if r["layer"] == "ACDC-12")
    assert f"(×{forced['ms'] / default['ms']:.1f})" in table[2]


@pytest.mark.parametrize("args,needle", [(("--runtimes", "tensorrt"), "--runtimes"),
                                         (("--dct-engine", "fftw"), "--dct-engine"),
                                         (("--dct-engine", "scipy,torch"), "--dct-engine")])
def test_bench_inference_bad_choices_are_one_line(args, needle):
    from typer.testing import CliRunner

    from surgeon.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--inference", "--sizes", "32", *args])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output


def test_onnxruntime_timing_child_process(tmp_path):
    """The child process times every file in shuffled rounds under one shared thread pool, and a file it cannot
    load comes back as one line naming the failure, not a traceback of the child."""
    from surgeon.bench.ort_timing import ort_samples
    from surgeon.io.onnx_export import export_onnx

    path = tmp_path / "dense.onnx"
    export_onnx(torch.nn.Linear(16, 16), torch.randn(2, 16), path, check=False)
    samples = ort_samples({"dense": str(path), "again": str(path)}, 16, [1, 5], {1: 3, 5: 2}, 2)
    assert {b: {k: len(v) for k, v in cells.items()} for b, cells in samples.items()} == {
        1: {"dense": 3, "again": 3}, 5: {"dense": 2, "again": 2}}
    assert all(t > 0 for cells in samples.values() for times in cells.values() for t in times)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="onnxruntime timing process failed") as caught:
        ort_samples({"broken": str(tmp_path / "broken.onnx")}, 16, [1], {1: 1}, 2)
    assert "\n" not in str(caught.value)
