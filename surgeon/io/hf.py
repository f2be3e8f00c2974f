"""Hugging Face-style folders for surgically changed transformers models: ``save_pretrained`` / ``from_pretrained``.

A folder holds what ``transformers`` users expect plus the recipe that rebuilds the changed structure:

* ``config.json``: the model's own ``PretrainedConfig`` (``architectures`` names the transformers class);
* ``model.safetensors``: a surgeon checkpoint (:mod:`surgeon.io.checkpoint`): every tensor once, ties listed as
  aliases, the surgery recipe in the metadata;
* ``surgeon_recipe.json``: the same recipe, indented, for people and tools that read JSON.

``from_pretrained`` builds the architecture from ``config.json`` with transformers alone — a class that
transformers itself defines, never ``trust_remote_code``, never the network — replays the recipe and loads the
weights, so the model computes exactly what the saved one did. transformers is an optional dependency
(``pip install 'surgeon[hf]'``); it is imported only when these functions run.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from typing import Any

import torch
from torch import nn

from surgeon.io.checkpoint import CheckpointError, load, read_checkpoint, save
from surgeon.surgery.record import records

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RECIPE_NAME = "surgeon_recipe.json"
_ARCHITECTURE_KEY = "surgeon.hf_architecture"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError("Hugging Face folders need transformers: pip install 'surgeon[hf]'") from exc
    return transformers


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with the ``config.json`` and ``model.safetensors`` of :func:`save_pretrained`."""
    path = os.fspath(path)
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_NAME, WEIGHTS_NAME))


def _architecture(model: nn.Module, config: Any) -> str:
    """The transformers class that rebuilds ``model``: its own class or nearest base defined by transformers."""
    transformers = _transformers()
    for kind in type(model).__mro__:
        if (kind.__module__.startswith("transformers.") and issubclass(kind, transformers.PreTrainedModel)
                and getattr(transformers, kind.__name__, None) is kind):
            return kind.__name__
    # A GraphModule (surgery rewrote calls) has lost the class; the config still names it.
    named = list(getattr(config, "architectures", None) or [])
    if named:
        return str(named[0])
    raise CheckpointError(f"cannot tell which transformers class rebuilds {type(model).__name__}: it is not a "
                          "transformers PreTrainedModel and its config has no 'architectures'")


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, config: Any = None,
                    dtype: torch.dtype | None = None) -> str:
    """Write ``model`` as a Hugging Face-style folder (``config.json``, ``model.safetensors``, recipe); returns it.

    ``config``: the ``PretrainedConfig`` to write, by default ``model.config``. ``dtype`` as in
    :func:`surgeon.save` (None: bit-exact). The files are written in a temporary folder next to ``folder`` and
    moved into place, so an interrupted save leaves no partial file; existing files of those names are replaced.
    """
    transformers = _transformers()
    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, transformers.PretrainedConfig):
        raise CheckpointError(f"save_pretrained needs the model's transformers config; {type(model).__name__} has "
                              "none (pass config=)")
    architecture = _architecture(model, config)
    config = copy.deepcopy(config)
    config.architectures = [architecture]
    folder = os.fspath(folder)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".surgeon-hf-", dir=parent)
    try:
        config.save_pretrained(staging)
        save(model, os.path.join(staging, WEIGHTS_NAME), dtype=dtype, metadata={_ARCHITECTURE_KEY: architecture})
        recipe = [r.to_dict() for r in records(model)]
        with open(os.path.join(staging, RECIPE_NAME), "w", encoding="utf-8") as handle:
            json.dump(recipe, handle, indent=2)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The one floating dtype of the saved tensors, or None when there are several (or none)."""
    kinds = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None


def _build(folder: str, architecture: str | None) -> nn.Module:
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{folder!r} has no usable {CONFIG_NAME}: {first}") from exc
    name = architecture or next(iter(getattr(config, "architectures", None) or []), None)
    kind = getattr(transformers, str(name), None) if name else None
    if not (isinstance(kind, type) and issubclass(kind, transformers.PreTrainedModel)):
        raise CheckpointError(f"{folder!r}: architecture {name!r} is not a class transformers defines "
                              "(custom code is never run)")
    return kind(config)


def from_pretrained(folder: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Rebuild the model saved by :func:`save_pretrained` in ``folder``, in eval mode, with its saved weights.

    The architecture comes from ``config.json`` (transformers classes only, offline), the recipe is replayed on
    it, and the tensors are copied in; a natively saved model loads bit-exactly (same outputs, same records).
    """
    folder = os.fspath(folder)
    if not is_pretrained_folder(folder):
        raise CheckpointError(f"{folder!r} is not a surgeon Hugging Face folder (needs {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME})")
    weights = os.path.join(folder, WEIGHTS_NAME)
    tensors, metadata = read_checkpoint(weights)
    model = _build(folder, metadata.get(_ARCHITECTURE_KEY))
    stored = _stored_dtype(tensors)
    if metadata.get("surgeon.dtype", "native") == "native" and stored is not None:
        model = model.to(stored)
    return load(weights, model, strict=strict).eval()
