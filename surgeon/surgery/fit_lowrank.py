"""Activation-whitened truncated SVD: the closed-form best rank-r affine map on calibration rows.

With centred input covariance ``Σ = Q Λ Qᵀ`` (regularised), ``L = Q Λ^{1/2}`` and centred cross moments ``Bc``,
``‖X_c W − T_c‖² = ‖Lᵀ W − L⁻¹ Bc‖² + const``, so the best rank-r W is ``L⁻ᵀ [L⁻¹ Bc]_r`` (Eckart–Young on the
whitened problem; the bias is then the mean residual). Without calibration ``Σ = I`` and this is the plain SVD.
"""

from __future__ import annotations

import torch

from surgeon.surgery.fit_acdc import single_threaded_torch
from surgeon.surgery.moments import Moments

# Eigenvalues of the input covariance below this fraction of the largest are treated as this floor.
WHITENING_FLOOR = 1e-8


def whitened_factors(moments: Moments, rank: int, bias: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u (out, r), v (r, in), bias (out,)) minimising the squared output error on the moments' rows
    (``bias=False``: no offset, the uncentred problem; the returned bias is then zero)."""
    m = moments.rows
    mean_x = moments.input_sum[:-1] / m if bias else moments.input_sum.new_zeros(moments.gram.shape[0] - 1)
    mean_t = moments.target_sum / m if bias else moments.target_sum.new_zeros(moments.cross.shape[1])
    cov = moments.gram[:-1, :-1] - m * torch.outer(mean_x, mean_x)
    cross = moments.cross[:-1] - m * torch.outer(mean_x, mean_t)
    eigenvalues, basis = torch.linalg.eigh((cov + cov.T) / 2)
    eigenvalues = eigenvalues.clamp_min(float(eigenvalues.max().clamp_min(1e-30)) * WHITENING_FLOOR)
    root = eigenvalues.sqrt()
    whitened = (basis / root).T @ cross                      # L⁻¹ Bc, (in, out)
    left, sigma, right = torch.linalg.svd(whitened, full_matrices=False)
    r = min(rank, sigma.numel())
    scale = sigma[:r].sqrt()
    v = (basis / root) @ (left[:, :r] * scale)                # L⁻ᵀ U_r Σ_r^{1/2}, (in, r)
    u = right[:r].T * scale                                   # V_r Σ_r^{1/2}, (out, r)
    bias = mean_t - (mean_x @ v) @ u.T
    return u, v.T.contiguous(), bias


@torch.no_grad()
def fit_lowrank(layer, train: Moments, held: Moments) -> tuple[float, float]:
    """Set a LowRankLinear to the whitened closed form on ``train``; returns (held-out, train) relative errors."""
    u, v, bias = whitened_factors(train, layer.rank, layer.bias is not None)
    layer.load_factors(u, v, bias)
    phi = torch.cat([v.T @ u.T, bias.unsqueeze(0)])
    return held.relative_error(phi), train.relative_error(phi)


def rank_curve(moments: Moments, bias: bool = True) -> list[float]:
    """Relative error of the best rank-r map for r = 1 … min(in, out), from one whitened SVD: the error of the
    full-rank fit plus the discarded whitened singular values, ``err²(r) = err²(full) + Σ_{i>r} σ_i² / ‖T‖²``."""
    with single_threaded_torch():
        u, v, offset = whitened_factors(moments, moments.gram.shape[0] - 1, bias)
        full = moments.relative_error(torch.cat([v.T @ u.T, offset.unsqueeze(0)])) ** 2
    sigma = u.pow(2).sum(0)                               # u = V_r Σ^{1/2} has orthogonal columns of norm √σ_i
    tail = sigma.pow(2).flip(0).cumsum(0).flip(0)         # Σ_{i≥r} σ_i²
    tail = torch.cat([tail[1:], tail.new_zeros(1)])       # Σ_{i>r}
    total = max(moments.target_energy, 1e-30)
    return [float((full + t / total) ** 0.5) for t in tail]
