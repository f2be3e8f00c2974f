"""Model surgery: selection, fx rewriting with a module-tree fallback, records."""

from surgeon.surgery.convert import LinearStructure, convert, register_linear
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.mollify import mollify
from surgeon.surgery.noisify import noisify
from surgeon.surgery.record import Change, Skip, SurgeryRecord, append_record, records
from surgeon.surgery.rules import Replacement, Rule, Site, SurgeryContext
from surgeon.surgery.transform import Call, register_transform, run_transform

__all__ = ["Call", "Change", "LinearStructure", "Replacement", "Rule", "Site", "Skip", "SurgeryContext",
           "SurgeryRecord", "append_record", "apply_surgery", "convert", "mollify", "noisify", "records",
           "register_linear", "register_transform", "run_transform"]
