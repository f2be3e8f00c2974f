"""Recovering a converted model's accuracy: distillation from its dense teacher, structure-aware optimiser groups."""

from surgeon.recovery.config import DistillConfig
from surgeon.recovery.distill import Distiller, distill
from surgeon.recovery.groups import param_groups

__all__ = ["DistillConfig", "Distiller", "distill", "param_groups"]
