"""Typed transform configs: frozen, validated once in their constructor, JSON round trip (see :mod:`.base`)."""

from surgeon.configs.base import CONFIG_TYPES, TransformConfig, config_names, config_type, named_config
from surgeon.configs.linear import AUTO_DEPTHS, DEFAULT_DEPTH, ACDCConfig, FastfoodConfig, LinearConfig, LowRankConfig
from surgeon.configs.noise import NOISIFY_TARGETS, MollifyConfig, NoisifyConfig

__all__ = ["AUTO_DEPTHS", "CONFIG_TYPES", "DEFAULT_DEPTH", "NOISIFY_TARGETS", "ACDCConfig", "FastfoodConfig",
           "LinearConfig", "LowRankConfig", "MollifyConfig", "NoisifyConfig", "TransformConfig", "config_names",
           "config_type", "named_config"]
