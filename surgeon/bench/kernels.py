"""GPU benchmark of the fused ACDC kernels (thesis §3.10.6, SPEC §7).

For every size and dtype, forward and forward+backward of one ACDC cascade on ``batch`` rows are timed with
``triton.testing.do_bench`` (CUDA events, median) and compared with

* ``torch.clone`` of the input (the memory-bound floor: the thesis' "≥ 8N bytes per example"),
* the multi-call torch path (``backend="torch"``: torch.fft Makhoul DCTs, several launches per factor),
* ``nn.Linear(N, N)`` (cuBLAS), the layer ACDC replaces.

Needs a CUDA device; on CPU :func:`bench_kernels` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from surgeon.ops.dispatch import acdc_cascade

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class KernelBenchRow:
    """One (size, dtype, pass) measurement; times in milliseconds, bandwidth in GB/s (1e9 bytes)."""

    size: int
    dtype: str
    pass_: str  # "fwd" or "fwd+bwd"
    batch: int
    depth: int
    ms: float
    gbps: float
    clone_ms: float
    clone_ratio: float  # ms / clone_ms (1.0 = as fast as copying the input once)
    torch_ms: float
    speedup_vs_torch: float
    linear_ms: float
    speedup_vs_linear: float

    def to_dict(self) -> dict[str, object]:
        return {("pass" if key == "pass_" else key): value for key, value in asdict(self).items()}


def gpu_description(device: str | torch.device = "cuda") -> str:
    """GPU name with the torch, CUDA and triton versions: what a kernel table must be quoted with."""
    import triton

    return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"triton {triton.__version__}")


def bytes_moved(batch: int, size: int, dtype: torch.dtype, pass_: str) -> int:
    """Minimum main-memory traffic of the fused kernel (diagonals are K·N, negligible and cache-resident).

    Forward reads x and writes y (2 rows per example); the backward kernel reads x and ∂L/∂y and writes ∂L/∂x
    (3 more rows), so forward+backward moves 5 rows per example.
    """
    rows = {"fwd": 2, "fwd+bwd": 5}[pass_]
    return rows * batch * size * torch.empty((), dtype=dtype).element_size()


def achieved_gbps(nbytes: int, ms: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) of moving ``nbytes`` in ``ms`` milliseconds."""
    if ms <= 0:
        raise ValueError(f"time must be positive, got {ms} ms")
    return nbytes / (ms * 1e-3) / 1e9


def _require_cuda(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"bench_kernels needs a CUDA device (got {device!s}, cuda available: "
                           f"{torch.cuda.is_available()}); the CPU benchmarks live in surgeon.bench.layers")
    return device


def _median_ms(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def bench_kernels(device: str | torch.device = "cuda", sizes: Sequence[int] = (512, 1024, 2048, 4096, 8192),
                  batch: int = 4096, dtypes: Sequence[str] = ("fp32", "bf16"), depth: int = 1,
                  activation: str | None = "relu", seed: int = 0) -> list[KernelBenchRow]:
    """Time the fused Triton ACDC cascade against clone, the torch.fft path and cuBLAS ``nn.Linear``.

    ``depth`` factors of size N = each of ``sizes`` on a (batch, N) input per dtype; returns one row per
    (size, dtype, pass). Raises ``RuntimeError`` without CUDA.
    """
    device = _require_cuda(device)
    rows: list[KernelBenchRow] = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name in dtypes:
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
        dtype = DTYPES[name]
        for n in sizes:
            x = torch.randn(batch, n, generator=gen).to(device, dtype).requires_grad_(True)
            grad = torch.randn(batch, n, generator=gen).to(device, dtype)
            a, d = (1 + 0.1 * torch.randn(2, depth, n, generator=gen)).to(device, dtype).unbind(0)
            b = torch.zeros(depth, n, device=device, dtype=dtype)
            params = [t.requires_grad_(True) for t in (a, d, b)]
            perms = (torch.stack([torch.randperm(n, generator=gen) for _ in range(depth - 1)]).to(device)
                     if depth > 1 else None)
            linear = torch.nn.Linear(n, n, device=device, dtype=dtype)
            leaves = [x, *params, *linear.parameters()]

            def run(backend: str, x=x, a=a, d=d, b=b, perms=perms):
                return acdc_cascade(x, a, d, b, perms, activation, backend=backend)

            clone_ms = _median_ms(lambda x=x: x.detach().clone())
            cases = {
                "fwd": {"triton": lambda run=run: run("triton"), "torch": lambda run=run: run("torch"),
                        "linear": lambda x=x, linear=linear: linear(x)},
                "fwd+bwd": {"triton": lambda run=run, g=grad: run("triton").backward(g),
                            "torch": lambda run=run, g=grad: run("torch").backward(g),
                            "linear": lambda x=x, linear=linear, g=grad: linear(x).backward(g)},
            }
            for pass_, fns in cases.items():
                with torch.set_grad_enabled(pass_ == "fwd+bwd"):
                    ms = {key: _median_ms(fn, grad_to_none=leaves) for key, fn in fns.items()}
                rows.append(KernelBenchRow(
                    size=n, dtype=name, pass_=pass_, batch=batch, depth=depth, ms=ms["triton"],
                    gbps=achieved_gbps(bytes_moved(batch, n, dtype, pass_), ms["triton"]), clone_ms=clone_ms,
                    clone_ratio=ms["triton"] / clone_ms, torch_ms=ms["torch"],
                    speedup_vs_torch=ms["torch"] / ms["triton"], linear_ms=ms["linear"],
                    speedup_vs_linear=ms["linear"] / ms["triton"]))
    return rows


def format_rows(rows: Sequence[KernelBenchRow]) -> str:
    """A plain-text table of :func:`bench_kernels` rows."""
    head = f"{'N':>6} {'dtype':>5} {'pass':>8} {'ms':>8} {'GB/s':>8} {'x clone':>8} {'vs torch':>9} {'vs linear':>9}"
    lines = [head]
    for r in rows:
        lines.append(f"{r.size:>6} {r.dtype:>5} {r.pass_:>8} {r.ms:>8.3f} {r.gbps:>8.1f} {r.clone_ratio:>8.2f} "
                     f"{r.speedup_vs_torch:>8.2f}x {r.speedup_vs_linear:>8.2f}x")
    return "\n".join(lines)
