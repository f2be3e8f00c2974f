"""Closed-form fitting of Adaptive Fastfood ``y = S Ĥ G Π Ĥ B x + bias`` (thesis §3.9), block by block.

Each stacked block j owns its own output slice, so blocks are fitted independently. With the others fixed, each
diagonal enters the block's output linearly (rows in Gram form, :mod:`surgeon.surgery.moments`):

    S, bias:  per output coordinate i, a 2×2 least squares on (w_i, 1), w = ((x ⊙ B) Ĥ Π ⊙ G) Ĥ
    G:        ((P Pᵀ) ⊙ (VᵀV)) g = rowsum((Vᵀ R) ⊙ P),   V = (x ⊙ B) Ĥ Π,  P = Ĥ diag(S)
    B:        ((P Pᵀ) ⊙ (XᵀX)) β = rowsum((Xᵀ R) ⊙ P),   P = Ĥ Π diag(G) Ĥ diag(S)
"""

from __future__ import annotations

import torch

from surgeon.ops.hadamard import hadamard_matrix
from surgeon.surgery.moments import Moments, solve_damped


def _block_moments(moments: Moments, in_features: int, d: int, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The input Gram padded to (d+1, d+1) (constant coordinate last) and the cross moments of one output slice."""
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    index = torch.cat([torch.arange(in_features), torch.tensor([d])])
    gram[index.unsqueeze(1), index.unsqueeze(0)] = moments.gram
    cross = torch.zeros(d + 1, cols.stop - cols.start, dtype=torch.float64)
    cross[index] = moments.cross[:, cols]
    return gram, cross


class _Block:
    def __init__(self, scale, gauss, binary, perm, bias, gram, cross, rows, hadamard, adaptive):
        self.adaptive = adaptive
        self.scale, self.gauss, self.binary, self.perm, self.bias = scale, gauss, binary, perm, bias
        self.gram, self.cross, self.rows, self.h = gram, cross, rows, hadamard
        self.width = cross.shape[1]
        self.lin = torch.eye(gram.shape[0], dtype=torch.float64)[:, :-1]   # x_aug -> padded x, (d+1, d)

    def mid(self) -> torch.Tensor:
        """V's map (d+1, d): ((x ⊙ B) Ĥ)[:, Π]."""
        return ((self.lin * self.binary) @ self.h)[:, self.perm]

    def last(self) -> torch.Tensor:
        """w's map (d+1, width)."""
        return ((self.mid() * self.gauss) @ self.h)[:, : self.width]

    def affine(self) -> torch.Tensor:
        phi = self.last() * self.scale[: self.width]
        phi[-1] += self.bias if self.bias is not None else 0.0
        return phi

    def fit_scale(self) -> None:
        w = self.last()
        sw = self.gram @ w
        ww, w1 = (w * sw).sum(0), sw[-1]
        wt, t1 = (w * self.cross).sum(0), self.cross[-1]
        if not self.adaptive:      # S is a fixed buffer: only the bias moves
            if self.bias is not None:
                self.bias.copy_((t1 - w1 * self.scale[: self.width]) / self.rows)
            return
        if self.bias is None:
            self.scale[: self.width] = wt / ww.clamp_min(1e-30)
            return
        det = (ww * self.rows - w1 * w1).clamp_min(1e-30)
        self.scale[: self.width] = (wt * self.rows - w1 * t1) / det
        self.bias.copy_((ww * t1 - w1 * wt) / det)

    def _residual_cross(self, features: torch.Tensor) -> torch.Tensor:
        """Featuresᵀ (T − 1 bias)."""
        out = features.T @ self.cross
        if self.bias is not None:
            out = out - torch.outer(features.T @ self.gram[:, -1], self.bias)
        return out

    def fit_diagonal(self, features: torch.Tensor, after: torch.Tensor, current: torch.Tensor,
                     damping: float) -> torch.Tensor:
        """Least squares for a diagonal v in ``out = (Z ⊙ v) P``: Z = x_aug features, P = after."""
        zz = features.T @ self.gram @ features
        system = (after @ after.T) * zz
        rhs = (self._residual_cross(features) * after).sum(1)
        return solve_damped(system, rhs, current, damping)[0]

    def fit_gauss(self, damping: float) -> None:
        after = (self.h * self.scale)[:, : self.width]
        self.gauss.copy_(self.fit_diagonal(self.mid(), after, self.gauss, damping))

    def fit_binary(self, damping: float) -> None:
        after = ((self.h[:, self.perm] * self.gauss) @ self.h * self.scale)[:, : self.width]
        self.binary.copy_(self.fit_diagonal(self.lin, after, self.binary, damping))


@torch.no_grad()
def fit_fastfood(layer, train: Moments, held: Moments, *, sweeps: int = 6, damping: float = 1e-3
                 ) -> tuple[float, float]:
    """Fit a FastfoodLinear in place; keeps the parameters with the lowest held-out error seen (the starting ones
    included). Returns (held-out, train) relative errors."""
    d, out = layer.d, layer.out_features
    h = hadamard_matrix(d, dtype=torch.float64) / d ** 0.5
    names = ["scale", "gauss", "binary"]
    work = {n: getattr(layer, n).detach().double().cpu().clone() for n in names}
    bias = None if layer.bias is None else layer.bias.detach().double().cpu().clone()
    blocks = []
    for j in range(layer.blocks):
        cols = slice(j * d, min((j + 1) * d, out))
        gram, cross = _block_moments(train, layer.in_features, d, cols)
        blocks.append(_Block(work["scale"][j], work["gauss"][j], work["binary"][j], layer.perm[j].cpu(),
                             None if bias is None else bias[cols], gram, cross, train.rows, h, layer.adaptive))

    def errors() -> tuple[float, float, torch.Tensor]:
        phi = torch.cat([b.affine() for b in blocks], dim=1)[torch.cat([torch.arange(layer.in_features),
                                                                         torch.tensor([d])])]
        return held.relative_error(phi), train.relative_error(phi), phi

    best_held, best_train, _ = errors()
    snapshot = {n: v.clone() for n, v in work.items()}, None if bias is None else bias.clone()
    for _ in range(sweeps):
        for block in blocks:
            block.fit_scale()
            if layer.adaptive:
                block.fit_gauss(damping)
                block.fit_scale()
                block.fit_binary(damping)
                block.fit_scale()
        held_error, train_error, _ = errors()
        if held_error < best_held:
            best_held, best_train = held_error, train_error
            snapshot = {n: v.clone() for n, v in work.items()}, None if bias is None else bias.clone()
        if not layer.adaptive:
            break
    params, best_bias = snapshot
    if layer.adaptive:
        for n in names:
            getattr(layer, n).copy_(params[n].to(getattr(layer, n)))
    if layer.bias is not None and best_bias is not None:
        layer.bias.copy_(best_bias.to(layer.bias))
    return best_held, best_train
