"""Architectures the CLI tests name with --arch (importable as tests.archs)."""

from torch import nn


def conv_only() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def mobilenet_v3_small() -> nn.Module:
    """torchvision's MobileNetV3-small (10 classes): most of its weights are 1x1 convolutions."""
    from torchvision.models import mobilenet_v3_small as build

    return build(num_classes=10)
