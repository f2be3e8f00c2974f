"""Configs of ``surgeon.convert``: which structured layer replaces each linear map, and how it is chosen.

:class:`LinearConfig` holds what every structure shares — the default policy (``min_features``,
``skip_output``), the seed and the fitting options of ``init="fit"`` (thesis §3.10.7: a structured layer
initialised to imitate a trained dense one). :class:`ACDCConfig` (§3.10, eq. 3.24) and
:class:`FastfoodConfig` (§3.9, eq. 3.9) add their layer's own options. A new structure derives from
:class:`LinearConfig` and registers a :class:`surgeon.surgery.convert.LinearStructure` for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from surgeon.configs.base import TransformConfig
from surgeon.layers.acdc import MAX_DEPTH
from surgeon.ops.acdc import ACTIVATIONS, canonical_activation

INITS = ("random", "fit")
#: What ``LinearConfig.targets`` may name (the sources are in :mod:`surgeon.surgery.linear_sources`).
TARGETS = ("linear", "conv1x1")
#: Depths ``depth="auto"`` tries, smallest first.
AUTO_DEPTHS = (1, 2, 4, 8, 12, 16, 24, 32)
DEFAULT_DEPTH = 12
DEFAULT_MIN_FEATURES = 64
_UNSET = "default"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearConfig(TransformConfig):
    """Options every linear structure shares.

    ``min_features``: layers with ``min(in, out)`` below it stay dense (the default 64 is where a depth-12 ACDC
    cascade, 3·12·N numbers, stops paying off). ``skip_output``: the model's output layer stays dense (the thesis
    keeps the classifier). ``seed``: the layer at candidate index i gets ``seed + i``. ``init``: ``"random"``
    (train from scratch) or ``"fit"`` (fit each replacement to its dense layer); ``max_error`` (relative
    held-out error, in (0, 1)) and ``target_ratio`` (compression) are the fit's goals; ``fit_steps`` optimiser
    steps (for structures without a closed-form fit) on ``fit_rows`` captured inputs per layer; ``fit_sweeps``
    caps a closed-form fit's sweeps (None: the solver's size-dependent default, tuned for speed). ``sequential``
    (default: on when calibration is given): each layer is fitted on the inputs it receives in the partly
    converted model, in execution order, against the dense model's outputs. ``budget``: keep about this fraction
    of the selected layers' parameters, choosing each layer's depth (ACDC) or rank (low-rank) by measured fit
    error gained per parameter; the record stores the per-layer choice. ``targets``: which linear maps are
    candidates — ``"linear"`` (``nn.Linear``, ``F.linear`` calls, Hugging Face ``Conv1D``) and/or ``"conv1x1"``
    (1×1 convolutions with ``groups=1`` and no padding, as a map over channels; see
    :mod:`surgeon.surgery.linear_sources`).
    """

    transform: ClassVar[str] = "convert"

    min_features: int = DEFAULT_MIN_FEATURES
    skip_output: bool = True
    seed: int | None = None
    init: str = "random"
    max_error: float | None = None
    target_ratio: float | None = None
    fit_steps: int = 300
    fit_rows: int = 2048
    fit_sweeps: int | None = None
    sequential: bool | None = None
    budget: float | None = None
    targets: tuple[str, ...] = ("linear",)

    def check(self) -> None:
        super().check()
        self._subset("targets", TARGETS)
        self._set("targets", tuple(t for t in TARGETS if t in self.targets))   # a set's order is not stable
        self._integer("min_features", at_least=0)
        self._flag("skip_output")
        self._integer("seed", optional=True)
        self._one_of("init", INITS)
        self._number("max_error", above=0, below=1, optional=True)
        self._number("target_ratio", above=0, optional=True)
        self._integer("fit_steps", at_least=1)
        self._integer("fit_rows", at_least=1)
        self._integer("fit_sweeps", at_least=1, optional=True)
        if self.sequential is not None:
            self._flag("sequential")
        self._number("budget", above=0, at_most=1, optional=True)
        if self.budget is not None and self.init != "fit":
            self._fail("budget", "chooses sizes by fitting; it needs init='fit'")

    def for_replay(self) -> LinearConfig:
        # Every weight is overwritten from the file: a random init rebuilds the same structure without data
        # (a budget was resolved into per-layer sizes when the record was written).
        return self.replace(init="random", sequential=None, budget=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ACDCConfig(LinearConfig):
    """:class:`~surgeon.layers.ACDCLinear` cascades (eq. 3.24).

    ``depth``: factors per layer, an integer from 1 to ``MAX_DEPTH``, a mapping {layer name: depth} (others get
    12), or ``"auto"`` (with ``init="fit"`` and ``max_error`` or ``target_ratio``: the smallest of
    :data:`AUTO_DEPTHS` meeting the tolerance, per layer). ``activation`` between factors (default ``"relu"``,
    or linear for ``init="fit"``, since a linear cascade can imitate a linear map), ``permute`` (fixed random
    permutations between factors), ``init_std`` (diagonals start at N(1, init_std²), §3.10.7.1).
    """

    name: ClassVar[str] = "acdc"

    depth: int | str | dict[str, int] = DEFAULT_DEPTH
    activation: str | None = _UNSET
    permute: bool = True
    init_std: float = 0.1

    def check(self) -> None:
        super().check()
        self._check_depth()
        if self.activation == _UNSET:
            self._set("activation", "none" if self.init == "fit" else "relu")
        try:
            self._set("activation", canonical_activation(self.activation))
        except ValueError:
            self._fail("activation", f"must be one of {', '.join(map(repr, ACTIVATIONS))} or None; "
                                     f"got {self.activation!r}")
        self._flag("permute")
        self._number("init_std", at_least=0)

    def _check_depth(self) -> None:
        depth: Any = self.depth
        wanted = (f"must be an integer from 1 to {MAX_DEPTH}, 'auto', or a mapping {{layer name: depth}}; "
                  f"got {depth!r}")

        def in_range(k: Any) -> bool:
            return isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_DEPTH

        if isinstance(depth, dict):
            if not all(isinstance(k, str) and in_range(v) for k, v in depth.items()):
                self._fail("depth", wanted)
            self._set("depth", dict(depth))
        elif depth == "auto":
            if self.init != "fit":
                self._fail("depth", "'auto' chooses depths by fitting; it needs init='fit'")
            if self.max_error is None and self.target_ratio is None:
                self._fail("depth", "'auto' needs max_error (a tolerance) or target_ratio (a compression ratio)")
        elif not in_range(depth):
            self._fail("depth", wanted)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FastfoodConfig(LinearConfig):
    """:class:`~surgeon.layers.FastfoodLinear` transforms ``S H G Π H B`` (eq. 3.9); ``adaptive=False`` keeps
    S, G, B as fixed random buffers (Le et al.'s Fastfood) instead of learned diagonals."""

    name: ClassVar[str] = "fastfood"

    adaptive: bool = True

    def check(self) -> None:
        super().check()
        self._flag("adaptive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowRankConfig(LinearConfig):
    """:class:`~surgeon.layers.LowRankLinear` ``x ↦ U(Vᵀx) + b``, the truncated-SVD baseline.

    ``rank``: an integer or a mapping {layer name: rank}; or ``ratio``: the fraction of each layer's dense
    parameters to keep, in (0, 1] (default 0.25 when neither is given). With ``init="fit"`` the factors are the
    activation-whitened truncated SVD on calibration data, or the plain SVD of the weight without it.
    """

    name: ClassVar[str] = "lowrank"

    rank: int | dict[str, int] | None = None
    ratio: float | None = None

    def check(self) -> None:
        super().check()
        if self.rank is not None and self.ratio is not None:
            self._fail("rank", "give rank or ratio, not both")
        ranks = list(self.rank.values()) if isinstance(self.rank, dict) else [self.rank]
        if self.rank is not None and not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                                             for r in ranks):
            self._fail("rank", f"must be a positive integer or a mapping {{layer name: rank}}; got {self.rank!r}")
        if isinstance(self.rank, dict):
            self._set("rank", dict(self.rank))
        self._number("ratio", above=0, at_most=1, optional=True)
