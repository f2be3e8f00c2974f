"""Recipes reproducing the thesis's experiments at laptop scale (issue 8).

``run_recipe("acdc_regression", quick=True)`` runs ``recipes/acdc_regression.yaml``; see
:mod:`surgeon.recipes.runner` (also ``python -m surgeon.recipes NAME [--quick]``, torchrun-able). Each recipe's
logic lives in its own module here; the shared training loop, distributed setup and plotting are in
:mod:`surgeon.recipes.engine` and :mod:`surgeon.recipes.plotting`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES_DIR", "list_recipes", "load_recipe", "run_recipe"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that ``python -m surgeon.recipes.runner`` does not import the runner twice.
    if name in __all__:
        from surgeon.recipes import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'surgeon.recipes' has no attribute {name!r}")
