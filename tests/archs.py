"""Architectures the CLI tests name with --arch (importable as tests.archs)."""

from torch import nn


def conv_only() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
