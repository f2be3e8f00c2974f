"""Triton kernels for the structured layers (installed as ``surgeon.kernels``).

Liger-style layout: ``kernels/<op>.py`` holds the Triton kernels and their host launchers (no autograd: the
custom ops of :mod:`surgeon.ops.dispatch` register the gradients). Use them through
:mod:`surgeon.ops.dispatch`, which picks Triton or the pure-torch ``*_ref`` path per call. Triton decides
between compiling and interpreting (``TRITON_INTERPRET=1``) when a kernel is *decorated*, i.e. when these
modules are imported; :func:`ensure_mode` re-imports them if the setting changed.
The kernels import nothing from :mod:`surgeon.ops` (shared definitions live in :mod:`surgeon.primitives`), so
the dispatcher's import of this package is the only edge between the two.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from surgeon.kernels import acdc, acdc_staged, common, fastfood

__all__ = ["acdc", "acdc_staged", "common", "ensure_mode", "fastfood"]


def ensure_mode() -> tuple[ModuleType, ModuleType]:
    """``(acdc, fastfood)`` kernel modules decorated for the current ``TRITON_INTERPRET`` setting."""
    global acdc, acdc_staged, common, fastfood
    from triton import knobs

    mode = bool(knobs.runtime.interpret)
    if any(mode != module.INTERPRET for module in (common, acdc_staged, acdc, fastfood)):
        # Dependencies first, so that the kernels re-decorated last call re-decorated helpers.
        common = importlib.reload(common)
        acdc_staged = importlib.reload(acdc_staged)
        acdc = importlib.reload(acdc)
        fastfood = importlib.reload(fastfood)
    return acdc, fastfood
