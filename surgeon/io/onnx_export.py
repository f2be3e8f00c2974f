"""ONNX export of converted models, checked against onnxruntime, and an onnxruntime-vs-torch latency probe.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) with
``do_constant_folding=False``. Reasons, measured on torch 2.14 / onnxscript 0.7:

* the structured layers are first swapped for their export forms (:mod:`surgeon.io.lowering`), whose DFT and
  Hadamard tables are computed in-graph from tiny buffers; constant folding (TorchScript) or the onnxscript
  optimizer (dynamo, ``optimize=True``) would bake some of them into large initializers, partly and
  unpredictably, defeating compactness. onnxruntime folds them once at session creation instead;
* tracing runs Python loops (K factors, LSTM time steps) as written and takes well under a second per model,
  where ``torch.export`` is slower and stricter about Python-side state in noise modules;
* ``dynamic_axes`` on dim 0 of every input and output gives the dynamic batch.

``exporter="dynamo"`` (``optimize=False`` for the same reason) is the fallback: the default ``"auto"`` uses it
when the TorchScript exporter fails (Hugging Face GPT-2's mask code calls ``aten::diff``, which TorchScript
cannot export). Models returning a mapping (a Hugging Face ``ModelOutput``) export its tensors in order, and a
model with a Hugging Face ``config.use_cache`` exports without its key/value cache.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.io.checkpoint import file_size
from surgeon.io.lowering import lower_for_export


class ExportError(SurgeonError, RuntimeError):
    """The model could not be exported, or the exported file disagrees with torch beyond tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime reproduces torch on it."""

    path: str
    file_bytes: int                   # size on disk of the .onnx file
    param_bytes: int                  # fp32 bytes of the model's parameters (4 × count)
    state_bytes: int                  # bytes of all parameters and buffers in their own dtypes
    opset: int
    exporter: str
    input_names: list[str]
    output_names: list[str]
    checked_batches: list[int] = field(default_factory=list)
    max_abs_error: float | None = None   # over every output and checked batch
    max_rel_error: float | None = None   # max |ort − torch| / max |torch|, per output, worst case
    tolerance: float = 1e-4

    @property
    def size_limit(self) -> int:
        """The compactness bound: 1.1 × the fp32 parameter bytes + 1 MiB (graph structure, indices, header)."""
        return int(1.1 * self.param_bytes) + (1 << 20)

    @property
    def within_size_limit(self) -> bool:
        return self.file_bytes <= self.size_limit

    @property
    def passed(self) -> bool | None:
        return None if self.max_rel_error is None else self.max_rel_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """Every field plus the derived size limit and verdicts, JSON-able."""
        data = dataclasses.asdict(self)
        data.update(size_limit=self.size_limit, within_size_limit=self.within_size_limit, passed=self.passed)
        return data


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The output tensors in order: tuples and lists depth first, mappings by value (``None`` entries skipped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten_outputs(item)]
    if isinstance(out, Mapping):
        return [t for item in out.values() if item is not None for t in _flatten_outputs(item)]
    raise ExportError(f"model outputs must be tensors, (nested) tuples or mappings of tensors, got "
                      f"{type(out).__name__}")


def _tensors_or_tuples(out: Any) -> bool:
    """Whether the exporters take ``out`` as it is: a tensor or (nested) tuples and lists of tensors."""
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and all(_tensors_or_tuples(item) for item in out)


class _TupleOutputs(nn.Module):
    """The model with its outputs flattened to a tuple of tensors, the one output form every exporter accepts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten_outputs(self.model(*inputs)))


@contextlib.contextmanager
def _without_cache(model: nn.Module) -> Iterator[None]:
    """A Hugging Face model's key/value cache is an object, not a tensor: export the forward without it."""
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if cached:
        config.use_cache = False
    try:
        yield
    finally:
        if cached:
            config.use_cache = cached


def param_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters take in fp32 (4 × parameter count; ties counted once)."""
    return 4 * sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer in its own dtype (ties counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example inputs at batch 2B+1 (dim 0): the batch, its reverse, and its first row again."""
    return tuple(torch.cat([x, x.flip(0), x[:1]], 0) for x in inputs)


def _ort_session(path: str, threads: int | None = None) -> Any:
    """A CPU session with ``threads`` intra-op threads (onnxruntime's default when None)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimiser notices are not the user's concern
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _feed(names: Sequence[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    return {name: x.detach().cpu().numpy() for name, x in zip(names, inputs)}


def compare_outputs(session: Any, model: nn.Module, input_names: Sequence[str],
                    inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(max abs error, max relative error) of onnxruntime against the torch model on ``inputs``."""
    with torch.inference_mode():
        expected = _flatten_outputs(model(*inputs))
    got = session.run(None, _feed(input_names, inputs))
    if len(got) != len(expected):
        raise ExportError(f"onnxruntime returned {len(got)} outputs, torch {len(expected)}")
    worst_abs = worst_rel = 0.0
    for ort_out, ref in zip(got, expected):
        ref64 = ref.detach().double().cpu()
        out64 = torch.from_numpy(ort_out).double()
        if out64.shape != ref64.shape:
            raise ExportError(f"onnxruntime output shape {tuple(out64.shape)} != torch {tuple(ref64.shape)}")
        err = (out64 - ref64).abs().max().item() if ref64.numel() else 0.0
        scale = ref64.abs().max().item() if ref64.numel() else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return worst_abs, worst_rel


EXPORT_DTYPES = {torch.float32: 1e-4, torch.float16: 1e-2}  # file dtype -> default parity tolerance


def _in_dtype(model: nn.Module, inputs: tuple[torch.Tensor, ...],
              dtype: torch.dtype) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A copy of the model with floating parameters/buffers in ``dtype``, and the floating inputs cast alike."""
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"ONNX export supports {', '.join(str(d) for d in EXPORT_DTYPES)}; got {dtype}")
    return (copy.deepcopy(model).to(dtype),
            tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs))


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int = 18,
                dynamic_batch: bool = True, check: bool = True, exporter: str = "auto",
                tolerance: float | None = None, dtype: torch.dtype | None = None) -> ExportResult:
    """Export ``model`` (eval mode) to ``path`` with its structured layers lowered to compact ONNX ops.

    ``example_inputs``: a tensor or a tuple of tensors, batch on dim 0. With ``dynamic_batch`` dim 0 of every
    input and output is symbolic. With ``check`` the file is run in onnxruntime on the example inputs and, when
    the batch is dynamic, on a batch of 2B+1, and compared with the *original* model in torch; an
    ``ExportError`` is raised when the relative error exceeds ``tolerance`` (1e-4 for fp32). The write is
    atomic (temporary file in the same directory, then ``os.replace``).

    ``dtype=torch.float16`` writes an fp16 file (half the bytes; inputs and outputs fp16): the model is copied in
    fp16 and checked against that copy in torch; the structured layers still transform in fp32 inside the graph.
    ``tolerance`` defaults to 1e-4 (fp32) or 1e-2 (fp16).

    Noise modules export in their eval-mode (deterministic) form. Python loops are unrolled by the trace: a
    recurrent model (NoisyLSTM) is exported for the example's sequence length only.

    ``exporter``: ``"torchscript"``, ``"dynamo"``, or ``"auto"`` (TorchScript, then dynamo if it fails; the
    result's ``exporter`` says which wrote the file).
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; expected 'auto', 'torchscript' or 'dynamo'")
    inputs = _as_tuple(example_inputs)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ExportError("example_inputs must be a tensor or a tuple of tensors")
    if dtype is not None and dtype != torch.float32:
        model, inputs = _in_dtype(model, inputs, dtype)
    tolerance = EXPORT_DTYPES.get(dtype or torch.float32, 1e-4) if tolerance is None else tolerance
    path = os.fspath(path)
    was_training = model.training
    model.eval()
    try:
        with _without_cache(model):
            return _export_checked(model, inputs, path, opset, dynamic_batch, check, exporter, tolerance)
    finally:
        model.train(was_training)


def _export_checked(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, opset: int,
                    dynamic_batch: bool, check: bool, exporter: str, tolerance: float) -> ExportResult:
    with torch.inference_mode():
        sample = model(*inputs)
    n_outputs = len(_flatten_outputs(sample))
    lowered = lower_for_export(model)
    if not _tensors_or_tuples(sample):
        # Only then: the wrapper prefixes every initializer's name with "model.", which costs bytes in the file.
        lowered = _TupleOutputs(lowered)
    input_names = [f"input_{i}" for i in range(len(inputs))]
    output_names = [f"output_{i}" for i in range(n_outputs)]
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=directory)
    os.close(fd)
    try:
        used = _export_with(exporter, lowered, inputs, tmp, opset, dynamic_batch, input_names, output_names)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    result = ExportResult(path=path, file_bytes=file_size(path), param_bytes=param_bytes(model),
                          state_bytes=state_bytes(model), opset=opset, exporter=used,
                          input_names=input_names, output_names=output_names, tolerance=tolerance)
    if check:
        session = _ort_session(path)
        batches = [inputs, other_batch(inputs)] if dynamic_batch else [inputs]
        result.max_abs_error = result.max_rel_error = 0.0
        for batch in batches:
            abs_err, rel_err = compare_outputs(session, model, input_names, batch)
            result.checked_batches.append(int(batch[0].shape[0]))
            result.max_abs_error = max(result.max_abs_error, abs_err)
            result.max_rel_error = max(result.max_rel_error, rel_err)
        if not result.passed:
            raise ExportError(f"onnxruntime disagrees with torch on {path}: max relative error "
                              f"{result.max_rel_error:.3g} > {tolerance:g} (batches {result.checked_batches})")
    return result


def _export_with(exporter: str, lowered: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, opset: int,
                 dynamic_batch: bool, input_names: list[str], output_names: list[str]) -> str:
    """Run the chosen exporter (``"auto"``: TorchScript, then dynamo if TorchScript fails); the one that wrote."""
    if exporter != "auto":
        _export(lowered, inputs, path, opset, dynamic_batch, exporter, input_names, output_names)
        return exporter
    try:
        _export(lowered, inputs, path, opset, dynamic_batch, "torchscript", input_names, output_names)
        return "torchscript"
    except ExportError as first:
        try:
            _export(lowered, inputs, path, opset, dynamic_batch, "dynamo", input_names, output_names)
        except ExportError as second:
            raise ExportError(f"{first}; the dynamo exporter failed too: {second}") from second
        return "dynamo"


def _export(lowered: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, opset: int, dynamic_batch: bool,
            exporter: str, input_names: list[str], output_names: list[str]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter's deprecation and tracer warnings are expected here, not news to the user.
        warnings.simplefilter("ignore")
        try:
            if exporter == "torchscript":
                quiet = _native_output_silenced()
                axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
                with quiet:
                    torch.onnx.export(lowered, inputs, path, dynamo=False, opset_version=opset,
                                      input_names=input_names, output_names=output_names, dynamic_axes=axes,
                                      do_constant_folding=False)
            else:
                batch = torch.export.Dim("batch")
                shapes = tuple({0: batch} for _ in inputs) if dynamic_batch else None
                if shapes is not None and isinstance(lowered, _TupleOutputs):
                    shapes = (shapes,)  # its varargs reach torch.export as one tuple argument
                program = torch.onnx.export(lowered, inputs, dynamo=True, opset_version=opset,
                                            input_names=input_names, output_names=output_names,
                                            dynamic_shapes=shapes, optimize=False, verbose=False)
                program.save(path, external_data=False)
                _strip_debug_info(path)
        except ExportError:
            raise
        except Exception as exc:  # the exporters raise many unrelated types; give one clear message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {first}") from exc


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """torch 2.14's TorchScript exporter turns its C++ log on unconditionally (``setup_onnx_logging`` tests the
    function object, not its result) and dumps the whole IR graph to stdout when an operator is unsupported; the
    error it raises says what failed, so the dump is discarded (file descriptors 1 and 2, for the duration)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        for fd, copy_of in zip((1, 2), saved):
            os.dup2(copy_of, fd)
            os.close(copy_of)


def _strip_debug_info(path: str) -> None:
    """Drop the dynamo exporter's per-node debug metadata (stack traces, fx names: ~2 KB per node, ten times the
    weights of a small converted GPT-2) and its intermediate shape annotations; the graph is unchanged."""
    import onnx

    proto = onnx.load(path)
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    onnx.save(proto, path)


def onnx_latency(model: nn.Module, onnx_path: str | os.PathLike, example_inputs: Any, *, repeats: int = 30,
                 warmup: int = 3, threads: int | None = None) -> dict[str, float]:
    """Median wall time per call (ms) of onnxruntime on ``onnx_path`` and of torch eager on ``model``, CPU.

    Same inputs for both; ``threads`` sets both torch's and onnxruntime's intra-op thread count (None: leave
    the defaults). For benchmarks, not for timed tests. Returns ``{"onnxruntime_ms", "torch_ms", "batch",
    "speedup"}`` (speedup = torch / onnxruntime).
    """
    inputs = _as_tuple(example_inputs)
    session = _ort_session(os.fspath(onnx_path), threads)
    names = [i.name for i in session.get_inputs()]
    feed = _feed(names, inputs)

    def median_ms(fn: Any) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    previous = torch.get_num_threads()
    was_training = model.training
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        ort_ms = median_ms(lambda: session.run(None, feed))
        with torch.inference_mode():
            torch_ms = median_ms(lambda: model(*inputs))
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return {"onnxruntime_ms": ort_ms, "torch_ms": torch_ms, "batch": float(inputs[0].shape[0]),
            "speedup": torch_ms / ort_ms if ort_ms > 0 else float("nan")}
