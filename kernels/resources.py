"""What the kernels ask of a GPU, found by compiling them ahead of time: no GPU needed.

Triton ships ``ptxas`` and ``cuobjdump``, so each kernel can be compiled for a given NVIDIA architecture on any
machine and its cubin read back: registers per thread, local-memory stack per thread (register spills) and the
shared memory a block needs. A kernel whose shared memory passes the architecture's per-block limit would fail
to launch there (``OutOfResources``); the Triton interpreter, which the CPU tests use, never notices that.

The constexprs come from the same helpers the launchers use (:func:`~surgeon.kernels.common.tile_meta`,
:func:`~surgeon.kernels.acdc_staged.staged_meta`), with a bias, permutations and ReLU switched on: the most
demanding variant of each kernel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Per-block shared-memory limits (opt-in maximum, bytes) by compute capability.
SHARED_LIMITS = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
KERNELS = ("acdc_fwd", "acdc_bwd", "acdc_staged_fwd", "acdc_staged_bwd", "fastfood_fwd", "fastfood_bwd")
DEFAULT_STAGES = 3  # what a launch without ``num_stages`` gets on NVIDIA GPUs
_IO_POINTERS = ("x_ptr", "y_ptr", "g_ptr", "dx_ptr", "gy_ptr")
_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class KernelResources:
    """One kernel compiled for rows of ``size`` in ``dtype`` for ``sm_<arch>``."""

    kernel: str
    size: int
    dtype: str
    arch: int
    num_warps: int
    registers: int  # per thread
    spill_bytes: int  # local-memory stack per thread; 0 when nothing spills
    shared_bytes: int  # per block
    shared_limit: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= self.shared_limit

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "fits": self.fits}


def launched_kernels(n: int, arch: int) -> list[str]:
    """The ACDC and Fastfood kernels a device of ``sm_<arch>`` runs for rows of size ``n`` (before any fallback)."""
    from surgeon.kernels.acdc_staged import STAGED_MIN_N

    acdc = ["acdc_staged_fwd", "acdc_staged_bwd"] if n >= STAGED_MIN_N else ["acdc_fwd", "acdc_bwd"]
    return [*acdc, "fastfood_fwd", "fastfood_bwd"]


def _kernel_functions() -> dict[str, object]:
    from surgeon.kernels import acdc, acdc_staged, fastfood

    return {"acdc_fwd": acdc._acdc_fwd_kernel, "acdc_bwd": acdc._acdc_bwd_kernel,
            "acdc_staged_fwd": acdc_staged._acdc_fwd_staged_kernel,
            "acdc_staged_bwd": acdc_staged._acdc_bwd_staged_kernel,
            "fastfood_fwd": fastfood._fastfood_fwd_kernel, "fastfood_bwd": fastfood._fastfood_bwd_kernel}


def _constexprs(kernel: str, n: int, dtype: torch.dtype) -> dict[str, object]:
    from surgeon.kernels.acdc_staged import staged_meta
    from surgeon.kernels.common import ACT_CODES, dot_precision, tile_meta

    consts: dict[str, object] = {"N": n, "PREC": dot_precision(dtype)}
    if kernel.startswith("acdc"):
        consts.update(HAS_BIAS=True, HAS_PERM=True, ACT=ACT_CODES["relu"])
    consts.update(staged_meta(n) if "staged" in kernel else tile_meta(n))
    return consts


def _signature(fn, consts: dict[str, object], dtype: torch.dtype) -> dict[str, str]:
    io = _TRITON_DTYPES[dtype]
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "perm_ptr":
            sig[name] = "*i32"
        elif name in _IO_POINTERS:
            sig[name] = "*" + io
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        elif name == "inv_norm":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _cubin_usage(cubin: bytes) -> tuple[int, int]:
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if found is None:
        raise RuntimeError(f"could not read the resource usage from cuobjdump's output: {out!r}")
    return int(found.group(1)), int(found.group(2))


def kernel_resources(sizes: Sequence[int], dtypes: Sequence[torch.dtype] = (torch.bfloat16,), arch: int = 90,
                     kernels: Sequence[str] | None = None) -> list[KernelResources]:
    """Compile ``kernels`` (default: those :func:`launched_kernels` picks) for ``sm_<arch>``; one row per kernel.

    Needs Triton's NVIDIA backend tools (``ptxas``, ``cuobjdump``, bundled with triton), not a GPU. Compiling
    happens in a fresh interpreter: one that imported Triton under ``TRITON_INTERPRET=1`` cannot compile.
    """
    from surgeon.kernels.common import supported

    if arch not in SHARED_LIMITS:
        raise ValueError(f"unknown architecture sm_{arch}; expected one of "
                         f"{', '.join(f'sm_{a}' for a in SHARED_LIMITS)}")
    unknown = sorted(set(kernels or ()) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernel {unknown[0]!r}; expected one of {', '.join(KERNELS)}")
    for dtype in dtypes:
        for n in sizes:
            if dtype not in _TRITON_DTYPES or not supported(n, dtype):
                raise ValueError(f"the kernels do not handle N={n} in {dtype}")
    request = {"sizes": list(sizes), "dtypes": [_TRITON_DTYPES[d] for d in dtypes], "arch": arch,
               "kernels": list(kernels) if kernels else None}
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "surgeon.kernels.resources", json.dumps(request)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"compiling the kernels for sm_{arch} failed: {last[0]}")
    return [KernelResources(**row) for row in json.loads(done.stdout)]


def _compile(sizes: Sequence[int], dtypes: Sequence[str], arch: int,
             kernels: Sequence[str] | None) -> list[KernelResources]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from surgeon.kernels.acdc_staged import NUM_STAGES
    from surgeon.kernels.common import num_warps

    functions = _kernel_functions()
    by_name = {name: dtype for dtype, name in _TRITON_DTYPES.items()}
    rows = []
    for dtype_name in dtypes:
        dtype = by_name[dtype_name]
        for n in sizes:
            for name in kernels or launched_kernels(n, arch):
                fn = functions[name]
                consts = _constexprs(name, n, dtype)
                src = ASTSource(fn, _signature(fn, consts, dtype), constexprs=consts)
                warps = num_warps(n)
                options = {"num_warps": warps, "num_stages": NUM_STAGES if "staged" in name else DEFAULT_STAGES}
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                registers, stack = _cubin_usage(compiled.asm["cubin"])
                rows.append(KernelResources(
                    kernel=name, size=n, dtype=dtype_name, arch=arch, num_warps=warps, registers=registers,
                    spill_bytes=stack, shared_bytes=int(compiled.metadata.shared), shared_limit=SHARED_LIMITS[arch]))
    return rows


if __name__ == "__main__":
    _request = json.loads(sys.argv[1])
    _rows = _compile(_request["sizes"], _request["dtypes"], _request["arch"], _request["kernels"])
    print(json.dumps([asdict(row) for row in _rows]))
