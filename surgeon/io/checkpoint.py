"""Compressed checkpoints: safetensors weights plus the surgery recipe that rebuilds the model's structure.

File layout (one ``.safetensors`` file):

* tensors: every parameter and buffer of ``model.state_dict()``, each storage written once. safetensors refuses
  tensors that share memory, so a tied tensor (the same storage, offset, shape and strides under several
  names) is stored under its first name only and the others are listed in ``surgeon.aliases``;
* ``__metadata__`` (all string values): ``format: "pt"``, ``surgeon.version``, ``surgeon.recipe`` (JSON list of
  :class:`~surgeon.surgery.record.SurgeryRecord` dicts, oldest first: transform, config type and config — layer
  type, depth, activation, seed... — and the exact module names selected; records of the pre-config form, with
  ``arguments``, are translated by :mod:`surgeon.configs.legacy`), ``surgeon.aliases`` (JSON
  ``{alias: stored_name}``) and ``surgeon.dtype`` (the storage dtype requested, or ``"native"``).

``save(..., dtype=torch.float16 | torch.bfloat16)`` stores floating tensors in half precision (integer buffers
such as permutations keep their dtype). ``load`` always casts every tensor to the dtype of the matching tensor
of the rebuilt model, so a half-precision file loads into an fp32 model as fp32 (rounded values, not bit-exact
to the model that was saved; a native-dtype file is bit-exact).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.io.atomic import write_atomically
from surgeon.surgery.record import SurgeryRecord, append_record, records, set_records, unwrap

FORMAT_VERSION = "1"
_HALF_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

class CheckpointError(SurgeonError, ValueError):
    """A checkpoint cannot be written, read, or does not fit the model it is loaded into."""


def file_size(path: str | os.PathLike) -> int:
    """Bytes the file at ``path`` takes on disk (its length)."""
    return os.path.getsize(os.fspath(path))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("surgeon")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        import surgeon

        return str(getattr(surgeon, "__version__", "unknown"))


def _storage_key(t: torch.Tensor) -> tuple[int, str]:
    return (t.untyped_storage().data_ptr(), str(t.device))


def _view_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (*_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _plain_tensors(model: nn.Module, dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Name -> contiguous CPU tensor with each storage once, and alias -> stored name for exact ties."""
    state = model.state_dict(keep_vars=False)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_view: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            raise CheckpointError(f"cannot save {name!r}: it is an uninitialised lazy tensor; "
                                  "run one forward pass first")
        if tensor.device.type == "meta":
            raise CheckpointError(f"cannot save {name!r}: it is on the meta device and holds no data; "
                                  "materialise the model first (e.g. model.to_empty(device='cpu') and load weights)")
        if tensor.numel() > 0:
            key = _view_key(tensor)
            if key in first_by_view:
                aliases[name] = first_by_view[key]
                continue
            first_by_view[key] = name
        out = tensor.detach()
        if dtype is not None and out.is_floating_point():
            out = out.to(dtype)
        # clone(): a different view of a shared storage (not an exact tie) must become its own storage.
        tensors[name] = out.to("cpu").contiguous().clone()
    return tensors, aliases


def save(model: nn.Module, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
         metadata: dict[str, str] | None = None, overwrite: bool = True) -> int:
    """Write ``model``'s weights and surgery recipe to the ``.safetensors`` file ``path``; returns its size.

    ``dtype``: None keeps every tensor's dtype (bit-exact round trip); ``torch.float16`` / ``torch.bfloat16``
    (or ``torch.float32``) stores floating tensors in that dtype, integer buffers unchanged; loading casts back
    to the model's dtype. The write is atomic: a temporary file in the same directory replaced into ``path``, so
    an interrupted save never leaves a partial checkpoint. ``metadata`` adds string entries of the caller's own
    (e.g. how to rebuild the original architecture). ``overwrite=False`` raises ``FileExistsError`` rather than
    replace a file at ``path`` (even one created by another process while this one was writing).
    """
    from safetensors.torch import save_file

    if dtype is not None and dtype not in _HALF_DTYPES:
        raise CheckpointError(f"dtype must be None, torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    path = os.fspath(path)
    model = unwrap(model)      # a torch.compile wrapper would prefix every key with _orig_mod.
    tensors, aliases = _plain_tensors(model, dtype)
    recipe = [r.to_dict() for r in records(model)]
    try:
        recipe_json = json.dumps(recipe)
    except TypeError as exc:
        raise CheckpointError(f"the model's surgery records are not JSON-serialisable: {exc}") from exc
    extra = dict(metadata or {})
    metadata = {"format": "pt", "surgeon.version": _version(), "surgeon.format": FORMAT_VERSION,
                "surgeon.recipe": recipe_json, "surgeon.aliases": json.dumps(aliases),
                "surgeon.dtype": "native" if dtype is None else _HALF_DTYPES[dtype]}
    if any(not isinstance(k, str) or not isinstance(v, str) or k in metadata for k, v in extra.items()):
        raise CheckpointError("extra metadata must map new string keys to string values")
    metadata.update(extra)
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite=overwrite)
    return file_size(path)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing, truncated or corrupt file is a CheckpointError."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises SafetensorError, OSError or others on damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated: {reason}") from exc
    return tensors, metadata


def recipe_of(metadata: dict[str, str], path: str = "") -> list[SurgeryRecord]:
    """The surgery records stored in a checkpoint's metadata (empty for a plain safetensors file)."""
    raw = metadata.get("surgeon.recipe")
    if raw is None:
        return []
    try:
        return [SurgeryRecord.from_dict(item) for item in json.loads(raw)]
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r} has an unreadable surgery recipe: {exc}") from exc


def replay_step(model: nn.Module, record: SurgeryRecord) -> nn.Module:
    """Rebuild on ``model`` the structure ``record`` describes: its config (made replayable, e.g. a random init in
    place of a fit, since every weight comes from the file) on exactly the sites it selected."""
    import surgeon.surgery  # noqa: F401 - registers every transform's handler
    from surgeon.surgery.transform import Call, run_transform

    if not record.config_type:
        raise CheckpointError(f"recipe step {record.transform!r} is not a known transform (its record holds no "
                              "config to replay)")
    config = record.rebuild_config().for_replay()
    return run_transform(model, config, Call(include=list(record.selected), inplace=True, quiet=True))


def apply_recipe(model: nn.Module, recipe: list[SurgeryRecord], path: str = "") -> nn.Module:
    """Replay each recorded surgery on ``model`` (a freshly built original) and return the rebuilt model.

    Each step must select exactly the sites it selected when the checkpoint was made; the first one it cannot
    find (a module or call site this model lacks) is named in a ``CheckpointError``. Steps the model already
    carries (its own records equal the recipe's first steps) are not replayed again.
    """
    done = [r.to_dict() for r in records(model)]
    if done and done == [r.to_dict() for r in recipe[: len(done)]]:
        # The model already went through the first steps (e.g. it is the converted model itself): skip them.
        recipe_steps = list(enumerate(recipe, start=1))[len(done):]
    elif done:
        raise CheckpointError(f"checkpoint {path!r} does not fit this model: the model already carries surgeries "
                              f"({', '.join(r['transform'] for r in done)}) that differ from the checkpoint's recipe; "
                              "pass a freshly built original model")
    else:
        recipe_steps = list(enumerate(recipe, start=1))
    for step, record in recipe_steps:
        if not record.selected and not record.changes:
            append_record(model, record)     # a step that changed nothing replays as nothing
            continue
        where = f"checkpoint {path!r} does not fit this model: recipe step {step} ({record.transform})"
        try:
            with warnings.catch_warnings():
                # "include entry matched nothing" is a warning for users; here it is the error reported below.
                warnings.simplefilter("ignore")
                model = replay_step(model, record)
        except SurgeonError as exc:
            names = dict(model.named_modules())
            absent = [name for name in record.selected if name not in names]
            if absent:
                raise CheckpointError(f"{where} needs module {absent[0]!r}, which the model lacks") from exc
            raise CheckpointError(f"{where} failed: {exc}") from exc
        replayed = records(model)[-1].selected if records(model) else []
        absent = [name for name in record.selected if name not in set(replayed)]
        if absent:
            raise CheckpointError(f"{where} needs module {absent[0]!r}, which the model lacks")
    return model


def _aliases_of(metadata: dict[str, str], tensors: dict[str, torch.Tensor], path: str) -> dict[str, str]:
    """The ``surgeon.aliases`` map, refused unless every alias is a name that is not stored itself and points at
    one that is (a tampered map would otherwise tie tensors and silently drop the stored one)."""
    try:
        aliases = json.loads(metadata.get("surgeon.aliases", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path!r} has unreadable alias metadata: {exc}") from exc
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in aliases.items()):
        raise CheckpointError(f"checkpoint {path!r} has malformed alias metadata: expected a JSON object of "
                              "names to stored names")
    for alias, target in aliases.items():
        if alias in tensors:
            raise CheckpointError(f"checkpoint {path!r} is inconsistent: alias {alias!r} is also stored as a "
                                  "tensor")
        if target not in tensors:
            raise CheckpointError(f"checkpoint {path!r} is inconsistent: alias {alias!r} points to missing "
                                  f"tensor {target!r}")
    return aliases


def _retie(model: nn.Module, alias: str, target: str) -> None:
    """Make ``alias`` the very tensor ``target`` is (a tie in the saved model that the rebuilt one lacks)."""
    module_name, _, leaf = alias.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    target_module_name, _, target_leaf = target.rpartition(".")
    target_module = model.get_submodule(target_module_name) if target_module_name else model
    tensor = getattr(target_module, target_leaf)
    if leaf in module._parameters and isinstance(tensor, nn.Parameter):
        module._parameters[leaf] = tensor
    elif leaf in module._buffers:
        module._buffers[leaf] = tensor


def load(path: str | os.PathLike, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Rebuild ``model`` from the checkpoint at ``path`` and return it with the saved weights.

    ``model`` must be a freshly built *original* model (untrained is fine); the recipe's surgeries are replayed
    on it (it may be modified in place: always use the returned model), ties recorded in the file are
    restored, and every tensor is copied in, cast to the rebuilt model's dtype and device. The result computes
    exactly what the saved model computed when the file was saved in native dtype. ``strict=False`` tolerates
    keys present on only one side. Any mismatch is a one-line ``CheckpointError`` naming the first one.
    """
    path = os.fspath(path)
    tensors, metadata = read_checkpoint(path)
    recipe = recipe_of(metadata, path)
    aliases = _aliases_of(metadata, tensors, path)
    model = apply_recipe(model, recipe, path)
    state = model.state_dict(keep_vars=True)
    for alias, target in aliases.items():
        if alias in state and target in state and state[alias] is not state[target]:
            if tuple(state[alias].shape) != tuple(state[target].shape):
                raise CheckpointError(f"checkpoint {path!r} is inconsistent: alias {alias!r} ties tensors of "
                                      f"different shapes ({tuple(state[alias].shape)} and {target!r} "
                                      f"{tuple(state[target].shape)})")
            _retie(model, alias, target)
    state = model.state_dict(keep_vars=True)
    stored = set(tensors) | set(aliases)
    if strict:
        for name in state:
            if name not in stored:
                raise CheckpointError(f"checkpoint {path!r} does not fit this model: missing key {name!r}")
        for name in [*tensors, *aliases]:
            if name not in state:
                raise CheckpointError(f"checkpoint {path!r} does not fit this model: unexpected key {name!r} "
                                      "(no such parameter or buffer in the rebuilt model)")
    with torch.no_grad():
        for name, target in state.items():
            source = tensors.get(aliases.get(name, name))
            if source is None:
                continue
            if target is None or tuple(source.shape) != tuple(target.shape):
                shape = None if target is None else tuple(target.shape)
                raise CheckpointError(f"checkpoint {path!r} does not fit this model: shape mismatch for {name!r} "
                                      f"(file {tuple(source.shape)}, model {shape})")
            target.copy_(source.to(device=target.device, dtype=target.dtype))
    set_records(model, list(recipe))
    return model
