"""Reports on models: parameters, storage, FLOPs and activation memory, before and after surgery."""

from surgeon.reporting.report import LayerStats, Report, Totals, report

__all__ = ["LayerStats", "Report", "Totals", "report"]
