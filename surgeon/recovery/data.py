"""Reading a file of input tensors (``surgeon distill --data``, ``surgeon compare --data``) without unpickling code."""

from __future__ import annotations

import os

import numpy as np
import torch

from surgeon.errors import SurgeonError

PREFERRED_KEYS = ("inputs", "input", "x", "data")


class DataError(SurgeonError, ValueError):
    """A data file cannot be read or holds no usable tensor."""


def _pick(tensors: dict[str, torch.Tensor], path: str, key: str | None) -> torch.Tensor:
    if not tensors:
        raise DataError(f"{path}: holds no tensors")
    if key is not None:
        if key not in tensors:
            raise DataError(f"{path}: no tensor named {key!r} (has {', '.join(sorted(tensors))})")
        return tensors[key]
    for name in PREFERRED_KEYS:
        if name in tensors:
            return tensors[name]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise DataError(f"{path}: holds several tensors ({', '.join(sorted(tensors))}); name one of them "
                    f"'inputs' or pass its key")


def load_tensor(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """The tensor in a ``.safetensors``, ``.npz``/``.npy`` or weights-only ``.pt`` file (the one named ``key``,
    else "inputs"/"input"/"x"/"data", else the only one). Raises :class:`DataError` with one line otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            tensor = _pick(load_file(path), path, key)
        elif suffix in (".npz", ".npy"):
            loaded = np.load(path, allow_pickle=False)
            arrays = {"inputs": loaded} if suffix == ".npy" else {k: loaded[k] for k in loaded.files}
            tensor = _pick({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path, key)
        elif suffix in (".pt", ".pth", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            tensors = obj if isinstance(obj, dict) else {"inputs": obj}
            tensor = _pick({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, path, key)
        else:
            raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'}; use .safetensors, .npz or .pt")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file becomes one line
        raise DataError(f"{path}: cannot read it as {suffix} ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from exc
    if tensor.numel() == 0 or tensor.dim() == 0:
        raise DataError(f"{path}: the tensor is empty (shape {tuple(tensor.shape)})")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise DataError(f"{path}: the tensor holds NaN or Inf values")
    return tensor
