"""Turning the MODEL argument into a module, safely.

Accepted inputs:

* ``example:NAME`` — a built-in architecture from :mod:`surgeon.zoo`, freshly initialised;
* a state_dict (``.pt``/``.pth``/``.bin`` read with ``weights_only=True``, or ``.safetensors``) plus
  ``--arch package.module:factory`` that builds the architecture; a ``.pt`` dict
  ``{"arch": "example:NAME", "state_dict": {...}}`` names its built-in architecture itself;
* a surgeon checkpoint (``.safetensors`` with a recipe, written by ``surgeon convert``/``surgeon.save``) plus the
  architecture of the *original* model (``--arch``, or recorded in the file when it is a built-in example);
* a whole pickled module (``torch.save(model)``) only with ``--trust``: unpickling runs code from the file.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from surgeon import zoo
from surgeon.cli.failures import InputError, UsageError

EXAMPLE_PREFIX = "example:"
_ARCH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ARCH_METADATA_KEY = "surgeon.arch"


@dataclass
class LoadedModel:
    model: nn.Module
    kind: str                 # "example", "state_dict", "checkpoint", "pickle"
    arch: str | None          # how to rebuild the original architecture ("example:NAME" or "pkg.mod:fn")
    example: str | None       # built-in example name, when known (gives a default input)


def build_arch(spec: str) -> nn.Module:
    """Build the architecture named by ``example:NAME`` or ``package.module:factory``."""
    if spec.startswith(EXAMPLE_PREFIX):
        return zoo.build_example(spec[len(EXAMPLE_PREFIX):])
    if not _ARCH.match(spec):
        raise UsageError(f"--arch must look like package.module:factory or example:NAME, got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--arch {spec}: cannot import module {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--arch {spec}: module {module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"--arch {spec}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a model file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")


def _load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, arch: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        shape = next((line.strip() for line in detail if "size mismatch" in line), detail[-1] if detail else "")
        raise InputError(f"{path} does not fit --arch {arch}: {shape}") from exc
    if missing or unexpected:
        first = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise InputError(f"{path} does not fit --arch {arch}: {first} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected)")


def _require_arch(path: str, arch: str | None, what: str) -> str:
    if arch is None:
        raise UsageError(f"{path} holds {what}; pass --arch package.module:factory (or example:NAME) to build "
                         f"the architecture it belongs to")
    return arch


def _load_safetensors(path: str, arch: str | None) -> LoadedModel:
    from surgeon.io.checkpoint import load, read_checkpoint

    tensors, metadata = read_checkpoint(path)
    if "surgeon.recipe" in metadata:
        recorded = metadata.get(ARCH_METADATA_KEY)
        if arch is None and recorded and recorded.startswith(EXAMPLE_PREFIX):
            arch = recorded
        hint = f" (it was made from --arch {recorded})" if recorded else ""
        arch = _require_arch(path, arch, f"a surgeon checkpoint{hint}")
        return LoadedModel(load(path, build_arch(arch)), "checkpoint", arch, _example_name(arch))
    arch = _require_arch(path, arch, "a bare state_dict")
    model = build_arch(arch)
    _load_state_dict(model, tensors, path, arch)
    return LoadedModel(model, "state_dict", arch, _example_name(arch))


def _example_name(arch: str | None) -> str | None:
    return arch[len(EXAMPLE_PREFIX):] if arch and arch.startswith(EXAMPLE_PREFIX) else None


def _load_torch_file(path: str, arch: str | None, trust: bool) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only load failed" not in str(exc):
            raise InputError(f"{path}: not a readable PyTorch file ({str(exc).splitlines()[0]})") from exc
        if not trust:
            raise InputError(f"refusing to load {path}: it is a pickled Python object (e.g. torch.save(model)) and "
                             f"unpickling runs code from the file; pass --trust if you trust its source, or save "
                             f"a state_dict and pass --arch") from None
        return _load_pickle(path)
    except Exception as exc:  # noqa: BLE001 - torch.load fails on foreign bytes with many exception types
        raise InputError(f"{path}: not a readable PyTorch checkpoint "
                         f"({(str(exc).strip() or type(exc).__name__).splitlines()[0]})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj.get("arch"), str):
        recorded = obj["arch"]
        if arch is None and not recorded.startswith(EXAMPLE_PREFIX):
            raise UsageError(f"{path} names its architecture {recorded!r}; only built-in examples are built "
                             f"automatically, pass --arch {recorded} to confirm")
        arch = arch or recorded
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                         f"found {type(obj).__name__}")
    if not obj:
        raise InputError(f"{path}: the state_dict is empty")
    arch = _require_arch(path, arch, "a bare state_dict")
    model = build_arch(arch)
    _load_state_dict(model, obj, path, arch)
    return LoadedModel(model, "state_dict", arch, _example_name(arch))


def _load_pickle(path: str) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling can fail in arbitrary ways
        raise InputError(f"{path}: could not unpickle ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path}: the pickle holds a {type(obj).__name__}, not a torch.nn.Module")
    return LoadedModel(obj, "pickle", None, None)


def load_model(spec: str, *, arch: str | None = None, trust: bool = False) -> LoadedModel:
    """Load the MODEL argument of a command (see the module docstring for what is accepted)."""
    if arch is not None and not arch.startswith(EXAMPLE_PREFIX) and not _ARCH.match(arch):
        raise UsageError(f"--arch must look like package.module:factory or example:NAME, got {arch!r}")
    if spec.startswith(EXAMPLE_PREFIX):
        name = spec[len(EXAMPLE_PREFIX):]
        return LoadedModel(zoo.build_example(name), "example", spec, name)
    _check_file(spec)
    if spec.endswith(".pt2"):
        raise InputError(f"{spec}: torch.export programs (.pt2) are not supported; save the model's state_dict "
                         f"and pass --arch")
    if spec.endswith(".safetensors"):
        return _load_safetensors(spec, arch)
    return _load_torch_file(spec, arch, trust)


def example_inputs(loaded: LoadedModel, shape: tuple[int, ...] | None, *, required: bool = False,
                   batch: int | None = None) -> torch.Tensor | None:
    """An input for ``loaded.model``: random of ``shape`` (float), else the built-in example's default."""
    if shape is not None:
        first = next((p for p in loaded.model.parameters() if p.is_floating_point()), None)
        dtype = first.dtype if first is not None else torch.float32
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if loaded.example is not None:
        return zoo.example_input(loaded.example, batch)
    if required:
        raise UsageError("this model needs an example input: pass --input-shape, e.g. --input-shape 1,3,224,224")
    return None
