"""Second moments of a fitting problem, so that closed-form fits cost nothing per calibration row.

A linear (affine) replacement ``Φ(x) = x_aug Φ_aug`` with ``x_aug = [x, 1]`` and ``Φ_aug`` of shape (in+1, out)
has squared output error on rows ``X`` (M, in) against targets ``T`` (M, out)::

    ‖X_aug Φ_aug − T‖²_F = tr(Φ_augᵀ S Φ_aug) − 2 tr(Φ_augᵀ B) + ‖T‖²_F,   S = X_augᵀ X_aug,  B = X_augᵀ T

so every quantity a least-squares sweep needs is a product with ``S`` or ``B``, independent of M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Moments:
    """``S`` (in+1, in+1), ``B`` (in+1, out) and ``‖T‖²`` of one set of rows, in float64; ``inputs``/``targets``
    keep the rows themselves when there are fewer of them than features (then errors are cheaper by rows)."""

    gram: torch.Tensor
    cross: torch.Tensor
    target_energy: float
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @classmethod
    def of(cls, inputs: torch.Tensor, targets: torch.Tensor) -> Moments:
        """From rows ``inputs`` (M, in) and ``targets`` (M, out)."""
        x = torch.cat([inputs.double(), torch.ones(inputs.shape[0], 1, dtype=torch.float64,
                                                    device=inputs.device)], dim=1)
        t = targets.double()
        keep = inputs.shape[0] <= inputs.shape[1]
        return cls(x.T @ x, x.T @ t, float(t.pow(2).sum()), inputs.double() if keep else None, t if keep else None)

    @property
    def rows(self) -> float:
        return float(self.gram[-1, -1])

    @property
    def input_sum(self) -> torch.Tensor:
        """``X_augᵀ 1`` (in+1,): the column sums of the augmented rows."""
        return self.gram[:, -1]

    @property
    def target_sum(self) -> torch.Tensor:
        """``Tᵀ 1`` (out,)."""
        return self.cross[-1]

    def squared_error(self, affine: torch.Tensor) -> float:
        """``‖X_aug Φ_aug − T‖²`` of an affine map ``affine`` (in+1, out)."""
        value = (affine * (self.gram @ affine)).sum() - 2 * (affine * self.cross).sum() + self.target_energy
        return max(0.0, float(value))

    def relative_error(self, affine: torch.Tensor) -> float:
        """``‖X_aug Φ_aug − T‖ / ‖T‖``."""
        if self.target_energy <= 0:
            return 0.0 if self.squared_error(affine) == 0 else math.inf
        return math.sqrt(self.squared_error(affine) / self.target_energy)


    def row_error(self, outputs: torch.Tensor) -> float:
        """``‖outputs − T‖ / ‖T‖`` for the kept rows' outputs (rows, out)."""
        assert self.targets is not None
        if self.target_energy <= 0:
            return 0.0 if float((outputs - self.targets).abs().max()) == 0 else math.inf
        return math.sqrt(float((outputs.double() - self.targets).pow(2).sum()) / self.target_energy)


def solve_damped(gram: torch.Tensor, rhs: torch.Tensor, current: torch.Tensor, damping: float,
                 refine: bool = True) -> tuple[torch.Tensor, float]:
    """argmin_v vᵀGv − 2 rhsᵀv + λ‖v − current‖², λ = damping · mean(diag G): a proximal least-squares step.

    The proximal term keeps directions the data does not see (e.g. padded coordinates) where they were, and makes
    the solve well posed whatever the rank of ``G``. A float32 ``gram`` is factorised in float32 (a third of the
    float64 time) and the solution refined once against the float64 residual (mixed-precision iterative
    refinement, ``refine``), so it is accurate to about ``cond · 2⁻²⁴`` squared. Returns the float64 solution
    and λ.
    """
    scale = float(gram.diagonal().mean().clamp_min(1e-30))
    lam = damping * scale
    system = gram.clone()
    system.diagonal().add_(lam)
    rhs64 = rhs.double() + lam * current.double()
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        if system.dtype == torch.float64:
            return current.double(), lam
        return solve_damped(gram.double(), rhs, current, damping)
    value = torch.cholesky_solve(rhs64.to(system.dtype).unsqueeze(1), factor).squeeze(1).double()
    if refine and system.dtype != torch.float64:
        residual = rhs64 - system.double() @ value
        value = value + torch.cholesky_solve(residual.to(system.dtype).unsqueeze(1), factor).squeeze(1).double()
    return value, lam
