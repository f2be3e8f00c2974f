"""Recipe data: scikit-learn's bundled digits and generated tasks. Nothing is downloaded."""

from __future__ import annotations

import torch


def digits(seed: int, test_fraction: float = 0.3, image: bool = True) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` from sklearn's 1797 bundled 8×8 digits, a stratified seeded split.

    Pixels (0..16) are scaled to [0, 1]; ``image`` gives (n, 1, 8, 8), otherwise (n, 64).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=y.numpy())
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def parity(n_samples: int, bits: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random bit strings (as ±1 floats) and their parity (0/1 labels)."""
    b = torch.randint(0, 2, (n_samples, bits), generator=gen)
    return b.float() * 2 - 1, (b.sum(-1) % 2).long()


def unique_count(n_samples: int, length: int, high: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of ``length`` integers in ``[0, high]`` and the number of distinct values in each (the label).

    Labels range over 1..min(length, high + 1); they are returned as class indices (count − 1).
    """
    seq = torch.randint(0, high + 1, (n_samples, length), generator=gen)
    present = torch.zeros(n_samples, high + 1, dtype=torch.bool)
    present.scatter_(1, seq, True)
    return seq, present.sum(-1) - 1
