"""Recovering a converted model's accuracy (distillation from its dense teacher, structure-aware optimiser groups)
and comparing structures on the user's own model (:func:`compare`)."""

from surgeon.recovery.compare import Comparison, compare
from surgeon.recovery.config import DistillConfig
from surgeon.recovery.distill import Distiller, distill
from surgeon.recovery.groups import param_groups

__all__ = ["Comparison", "DistillConfig", "Distiller", "compare", "distill", "param_groups"]
