"""Structured drop-in replacements for ``nn.Linear``."""

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.layers.lowrank import LowRankLinear
from surgeon.layers.pointwise import PointwiseConv

__all__ = ["ACDCLinear", "FastfoodLinear", "LowRankLinear", "PointwiseConv"]
