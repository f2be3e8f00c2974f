"""``surgeon bench``: the speed tables of the structured layers (CPU) and the Triton kernels (CUDA)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import torch
import typer
from rich.table import Table

from surgeon.bench.kernels import DTYPES
from surgeon.cli.failures import UsageError, run_guarded
from surgeon.cli.options import JsonOption, QuietOption, parse_dtypes, parse_sizes
from surgeon.cli.output import Output

_NAMES = {dtype: name for name, dtype in DTYPES.items()}  # the kernel benchmark labels its rows by name


class BenchDevice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def rows_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    if not rows:
        return table
    for key in rows[0]:
        table.add_column(key.replace("_", " "), justify="right" if isinstance(rows[0][key], float) else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def rows_markdown(rows: list[dict]) -> str:
    """The same table as GitHub Markdown, for pasting results where they are quoted."""
    if not rows:
        return ""
    head = "| " + " | ".join(k.replace("_", " ") for k in rows[0]) + " |"
    rule = "|" + "|".join("---" for _ in rows[0]) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def bench_command(
    device: Annotated[BenchDevice, typer.Option("--device", help="cpu: layers vs nn.Linear; cuda: Triton "
                                                                  "kernels.")] = BenchDevice.cpu,
    sizes: Annotated[str | None, typer.Option("--sizes", help="Comma-separated N values.")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Rows per call (default 256 on CPU, 4096 on "
                                                               "CUDA).")] = None,
    depth: Annotated[int | None, typer.Option("--depth", help="ACDC factors per cascade (default 12 on CPU, 1 "
                                                               "on CUDA).")] = None,
    dtypes: Annotated[str | None, typer.Option("--dtypes", help="CUDA and --resources: comma-separated dtypes "
                                                                 "(fp32, bf16, fp16).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per measurement (CPU; --inference runs at "
                                                           "least 9 rounds a cell, 5 for the longest).")] = 5,
    resources: Annotated[bool, typer.Option("--resources", help="Instead of timing: compile the kernels for "
                                                                 "--gpu-arch and list registers, spills and "
                                                                 "shared memory. Needs no GPU.")] = False,
    gpu_arch: Annotated[int, typer.Option("--gpu-arch", help="With --resources: compute capability, e.g. 90 "
                                                              "(H100), 80 (A100).")] = 90,
    inference: Annotated[bool, typer.Option("--inference", help="Forward latency of each layer vs nn.Linear in "
                                                                  "torch and onnxruntime (CPU, 2 threads).")] = False,
    batches: Annotated[str | None, typer.Option("--batches", help="With --inference: comma-separated batch sizes "
                                                                   "(default 1,8,64,256).")] = None,
    runtimes: Annotated[str | None, typer.Option("--runtimes", help="With --inference: comma-separated runtimes "
                                                                     "(torch, onnxruntime; default both).")] = None,
    dct_engine: Annotated[str | None, typer.Option("--dct-engine", help="With --inference: also time the ACDC "
                                                                         "layers in torch with this DCT engine "
                                                                         "forced (scipy, torch, matmul), "
                                                                         "interleaved.")] = None,
    recurrent: Annotated[bool, typer.Option("--recurrent", help="Instead: ms per training update of NoisyLSTM "
                                                                 "(batch 64, 26 steps) against nn.LSTM; --sizes "
                                                                 "are hidden sizes.")] = False,
    against: Annotated[str | None, typer.Option("--against", help="With --recurrent: instead of nn.LSTM, time "
                                                                   "the update of this git revision's NoisyLSTM "
                                                                   "(needs the source checkout; e.g. 4392120^, "
                                                                   "before the fused gates).")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown.")] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Time the structured layers against nn.Linear (ratios measured in this one run).

    Example: surgeon bench --device cpu --sizes 4096,8192

    Example: surgeon bench --device cuda --dtypes fp32,bf16

    Example: surgeon bench --resources --gpu-arch 90

    Example: surgeon bench --inference --sizes 4096 --batches 1,64

    Example: surgeon bench --inference --sizes 32,128,256 --runtimes torch --dct-engine scipy

    Example: surgeon bench --recurrent --sizes 64,128

    Example: surgeon bench --recurrent --against 4392120^
    """
    out = Output(quiet, as_json)

    def action() -> None:
        for name, value in (("--batch", batch), ("--depth", depth), ("--repeats", repeats)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be positive, got {value}")
        size_list = parse_sizes(sizes) if sizes else None
        dtype_list = parse_dtypes(dtypes)

        with out.console.status("benchmarking", spinner="dots") if not (quiet or as_json) else _null() as status:
            def note(what: str) -> None:
                if status is not None:
                    status.update(f"benchmarking {what}")

            if inference:
                from surgeon.bench.inference import BATCHES, RUNTIMES, SIZES, THREADS, bench_inference

                results = bench_inference(size_list or SIZES, _batches(batches) if batches else BATCHES,
                                          repeats=repeats, on_case=note,
                                          runtimes=_choices("--runtimes", runtimes, RUNTIMES) if runtimes else RUNTIMES,
                                          compare_engine=_choices("--dct-engine", dct_engine, DCT_ENGINES)[0]
                                          if dct_engine else None)
                names = " and ".join(_choices("--runtimes", runtimes, RUNTIMES) if runtimes else RUNTIMES)
                title = (f"Inference, fp32, CPU, {THREADS} threads in {names}; speed-up over "
                         "nn.Linear(N, N) in the same runtime")
            elif recurrent and against:
                from surgeon.bench.recurrent import bench_against_revision

                results = bench_against_revision(against, tuple(size_list or (64, 128)), batch=batch or 64,
                                                 repeats=repeats, on_case=note)
                title = (f"Training update now and at {against}, batch {batch or 64}, 26 steps, CPU fp32 (one "
                         "thread each, lock-step processes)")
            elif recurrent:
                from surgeon.bench.recurrent import bench_recurrent

                results = bench_recurrent(tuple(size_list or (64, 128)), batch=batch or 64, repeats=repeats,
                                          on_case=note)
                title = f"Training update, batch {batch or 64}, 26 steps, CPU fp32 (one thread)"
            elif resources:
                from surgeon.kernels.resources import kernel_resources

                if status is not None:
                    status.update(f"compiling the kernels for sm_{gpu_arch}")
                results = kernel_resources(size_list or (256, 1024, 4096, 8192, 16384),
                                           dtypes=dtype_list or (torch.bfloat16,), arch=gpu_arch)
                title = f"Kernel resources compiled for sm_{gpu_arch} (static, no GPU run)"
            elif device is BenchDevice.cpu:
                from surgeon.bench.layers import bench_layers, machine_description

                results = bench_layers(size_list or (4096, 8192), batch=batch or 256, depth=depth or 12,
                                       repeats=repeats, on_case=note)
                title = f"CPU, batch {batch or 256}, fp32 ({machine_description()})"
            else:
                from surgeon.bench.kernels import bench_kernels, gpu_description

                results = bench_kernels(device="cuda", sizes=size_list or (512, 1024, 2048, 4096, 8192),
                                        batch=batch or 4096,
                                        dtypes=[_NAMES[d] for d in dtype_list or (torch.float32, torch.bfloat16)],
                                        depth=depth or 1)
                title = f"CUDA kernels, batch {batch or 4096}, depth {depth or 1} ({gpu_description()})"
        rows = [r.to_dict() for r in results]
        if markdown and inference:
            from surgeon.bench.inference import engine_table, speedup_table

            engines = f"\n\nForced DCT engine against the default, ms:\n\n{engine_table(results)}" if dct_engine else ""
            out.info(f"{title}\n\n{speedup_table(results)}{engines}")
        elif markdown:
            out.info(f"{title}\n\n{rows_markdown(rows)}")
        else:
            out.show(rows_table(title, rows))
        out.data(rows)

    run_guarded(out, action)


DCT_ENGINES = ("scipy", "torch", "matmul")


def _choices(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not values or any(v not in allowed for v in values):
        raise UsageError(f"{option} must be among {', '.join(allowed)}, got {text!r}")
    if option == "--dct-engine" and len(values) != 1:
        raise UsageError(f"--dct-engine takes one engine, got {text!r}")
    return values


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 or v > 1 << 16 for v in values):
        raise UsageError(f"--batches must be comma-separated integers between 1 and 65536, got {text!r}")
    return values


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
