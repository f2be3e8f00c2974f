"""Hugging Face-style folders for surgically changed transformers models: ``save_pretrained`` / ``from_pretrained``.

A folder holds what ``transformers`` users expect plus the recipe that rebuilds the changed structure:

* ``config.json``: the model's own ``PretrainedConfig`` (``architectures`` names the transformers class);
* ``model.safetensors``: a surgeon checkpoint (:mod:`surgeon.io.checkpoint`): every tensor once, ties listed as
  aliases, the surgery recipe in the metadata;
* ``surgeon_recipe.json``: the same recipe, indented, for people and tools that read JSON.

``from_pretrained`` builds the architecture from ``config.json`` with transformers alone — a class that
transformers itself defines, never ``trust_remote_code``, never the network — replays the recipe and loads the
weights, so the model computes exactly what the saved one did. A plain transformers folder (``model.save_pretrained``
of an unchanged model: its safetensors carry no recipe) loads through that class's own ``from_pretrained``,
offline and strictly (a missing, unexpected or misshapen weight is an error). transformers is an optional dependency
(``pip install 'surgeon[hf]'``); it is imported only when these functions run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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


def check_pretrained_folder(folder: str) -> None:
    """Raise a one-line CheckpointError saying why ``folder`` is not a loadable Hugging Face folder, if it is not."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder!r} is not a Hugging Face folder: no such directory")
    if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise CheckpointError(f"{folder!r} is a directory but not a Hugging Face folder: it has no {CONFIG_NAME}")
    if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        return
    present = set(os.listdir(folder))
    if WEIGHTS_NAME + ".index.json" in present:
        why = f"its weights are sharded ({WEIGHTS_NAME}.index.json), which is not supported"
    elif "pytorch_model.bin" in present:
        why = "its weights are pytorch_model.bin (a pickle), which is never loaded; save it with safetensors"
    else:
        why = f"it has no {WEIGHTS_NAME}"
    raise CheckpointError(f"{folder!r} has {CONFIG_NAME} but no usable weights: {why}")


def has_pretrained_config(model: nn.Module) -> bool:
    """Whether :func:`save_pretrained` can write ``model`` without an explicit ``config``."""
    config = getattr(model, "config", None)
    return config is not None and isinstance(config, _transformers().PretrainedConfig)


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
    folder = os.fspath(folder)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".surgeon-hf-", dir=parent)
    try:
        write_pretrained(model, staging, config=config, dtype=dtype)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_pretrained(model: nn.Module, folder: str, *, config: Any = None, dtype: torch.dtype | None = None) -> None:
    """Write the files of :func:`save_pretrained` into the existing folder ``folder`` (no staging of its own: the
    CLI writes into a temporary folder that it places atomically)."""
    transformers = _transformers()
    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, transformers.PretrainedConfig):
        raise CheckpointError(f"save_pretrained needs the model's transformers config; {type(model).__name__} has "
                              "none (pass config=)")
    architecture = _architecture(model, config)
    config = copy.deepcopy(config)
    config.architectures = [architecture]
    config.save_pretrained(folder)
    save(model, os.path.join(folder, WEIGHTS_NAME), dtype=dtype, metadata={_ARCHITECTURE_KEY: architecture})
    with open(os.path.join(folder, RECIPE_NAME), "w", encoding="utf-8") as handle:
        json.dump([r.to_dict() for r in records(model)], handle, indent=2)


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The one floating dtype of the saved tensors, or None when there are several (or none)."""
    kinds = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None


def _model_class(folder: str, architecture: str | None) -> tuple[type, Any]:
    """The transformers class (never custom code) and config that rebuild the model saved in ``folder``."""
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
    return kind, config


def original_model(folder: str | os.PathLike) -> nn.Module:
    """The freshly initialised transformers model the folder's surgery started from (its architecture, no weights
    read), e.g. the baseline of a report."""
    folder = os.fspath(folder)
    check_pretrained_folder(folder)
    _, metadata = read_checkpoint(os.path.join(folder, WEIGHTS_NAME))
    kind, config = _model_class(folder, metadata.get(_ARCHITECTURE_KEY))
    return kind(config).eval()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or info lines from transformers while it loads (the CLI prints one line per problem)."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _load_plain(folder: str) -> nn.Module:
    """A folder written by transformers' own ``save_pretrained``: its class's ``from_pretrained``, strictly."""
    kind, config = _model_class(folder, None)
    with _quiet_transformers():
        try:
            model, info = kind.from_pretrained(folder, config=config, local_files_only=True, use_safetensors=True,
                                               output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{folder!r}: transformers cannot load its weights: {first}") from exc
    for problem in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(map(str, info.get(problem) or ()))
        if keys:
            raise CheckpointError(f"{os.path.join(folder, WEIGHTS_NAME)!r} does not fit {kind.__name__}: "
                                  f"{problem.replace('_keys', '')} key {keys[0]} ({len(keys)} in all)")
    return model.eval()


def from_pretrained(folder: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Rebuild the model saved by :func:`save_pretrained` in ``folder``, in eval mode, with its saved weights.

    The architecture comes from ``config.json`` (transformers classes only, offline), the recipe is replayed on
    it, and the tensors are copied in; a natively saved model loads bit-exactly (same outputs, same records). A
    plain transformers folder (no recipe) loads with its class's own ``from_pretrained``, offline.
    """
    folder = os.fspath(folder)
    check_pretrained_folder(folder)
    weights = os.path.join(folder, WEIGHTS_NAME)
    tensors, metadata = read_checkpoint(weights)
    if "surgeon.recipe" not in metadata:
        return _load_plain(folder)
    kind, config = _model_class(folder, metadata.get(_ARCHITECTURE_KEY))
    model = kind(config)
    stored = _stored_dtype(tensors)
    if metadata.get("surgeon.dtype", "native") == "native" and stored is not None:
        model = model.to(stored)
    return load(weights, model, strict=strict).eval()
