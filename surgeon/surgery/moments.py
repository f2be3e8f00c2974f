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
    """``S`` (in+1, in+1), ``B`` (in+1, out) and ``‖T‖²`` of one set of rows, in float64."""

    gram: torch.Tensor
    cross: torch.Tensor
    target_energy: float

    @classmethod
    def of(cls, inputs: torch.Tensor, targets: torch.Tensor) -> Moments:
        """From rows ``inputs`` (M, in) and ``targets`` (M, out)."""
        x = torch.cat([inputs.double(), torch.ones(inputs.shape[0], 1, dtype=torch.float64,
                                                    device=inputs.device)], dim=1)
        t = targets.double()
        return cls(x.T @ x, x.T @ t, float(t.pow(2).sum()))

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


def solve_damped(gram: torch.Tensor, rhs: torch.Tensor, current: torch.Tensor, damping: float) -> torch.Tensor:
    """argmin_v vᵀGv − 2 rhsᵀv + λ‖v − current‖², λ = damping · mean(diag G): a proximal least-squares step.

    The proximal term keeps directions the data does not see (e.g. padded coordinates) where they were, and makes
    the solve well posed whatever the rank of ``G``.
    """
    scale = float(gram.diagonal().mean().clamp_min(1e-30))
    lam = damping * scale
    system = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        return current
    return torch.cholesky_solve((rhs + lam * current).unsqueeze(1), factor).squeeze(1)
