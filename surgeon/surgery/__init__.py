"""Model surgery: selection, fx rewriting with a module-tree fallback, records."""

from surgeon.surgery.convert import convert
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.record import Change, Skip, SurgeryRecord, append_record, records
from surgeon.surgery.rules import Replacement, Rule, Site, SurgeryContext

__all__ = ["Change", "Replacement", "Rule", "Site", "Skip", "SurgeryContext", "SurgeryRecord", "append_record",
           "apply_surgery", "convert", "records"]
