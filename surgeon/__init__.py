"""surgeon: model surgery for PyTorch — structured linear layers and noisy/mollified activations.

Layers (thesis §3.9–3.10): :class:`ACDCLinear`, :class:`FastfoodLinear`. Surgery: :func:`convert`,
:func:`noisify`, :func:`mollify` (each returns the model with a record of what changed, see :func:`records`),
configured by typed configs (:class:`ACDCConfig`, :class:`FastfoodConfig`, :class:`NoisifyConfig`,
:class:`MollifyConfig`) or the equivalent keywords.
Noise (§4.3–4.4): :class:`NoisyHardSigmoid`, :class:`NoisyHardTanh`, :class:`MollifiedActivation`,
:class:`StochasticSkip`, :class:`NoisyLSTM`, :class:`NoisyGRU`, :class:`Annealer`. Shipping: :func:`report`,
:func:`save`, :func:`load`, :func:`export_onnx`.
"""

import os as _os

# The CPU path runs pocketfft's worker threads between torch's OpenMP-parallel elementwise ops. libgomp's default
# spin-wait keeps torch's threads busy after every op and starves the FFT threads (a depth-1 ACDC forward ran 2x
# slower on 2 cores). Passive waiting takes effect only if set before torch loads OpenMP; a value the user set
# is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from surgeon.configs import ACDCConfig, FastfoodConfig, LowRankConfig, MollifyConfig, NoisifyConfig, TransformConfig
from surgeon.errors import (
    ConfigError,
    FitError,
    FitWarning,
    KernelFallbackWarning,
    SelectionError,
    SelectionWarning,
    SurgeonError,
    SurgeonWarning,
    SurgeryError,
    TraceFallbackWarning,
)
from surgeon.io import CheckpointError, ExportError, ExportResult, export_onnx, load, onnx_latency, save
from surgeon.io.hf import from_pretrained, save_pretrained
from surgeon.layers import ACDCLinear, FastfoodLinear, LowRankLinear
from surgeon.noise import (
    Annealer,
    MollifiedActivation,
    NoiseModule,
    NoisyGRU,
    NoisyGRUCell,
    NoisyHardSigmoid,
    NoisyHardTanh,
    NoisyLSTM,
    NoisyLSTMCell,
    StochasticSkip,
)
from surgeon.ops import dct, fwht, idct
from surgeon.recovery import DistillConfig, Distiller, compare, distill, param_groups
from surgeon.reporting import Report, report
from surgeon.surgery.convert import convert
from surgeon.surgery.engine import apply_surgery
from surgeon.surgery.mollify import mollify
from surgeon.surgery.noisify import noisify
from surgeon.surgery.record import SurgeryRecord, records
from surgeon.surgery.rules import Replacement, Rule, Site
from surgeon.surgery.transform import register_transform

__all__ = [
    "DistillConfig", "Distiller", "LowRankConfig", "LowRankLinear", "compare", "distill", "param_groups",  # issue 16
    "ACDCConfig", "FastfoodConfig", "MollifyConfig", "NoisifyConfig", "TransformConfig", "register_transform",
    "ACDCLinear", "Annealer", "CheckpointError", "ConfigError", "ExportError", "ExportResult", "FastfoodLinear",
    "FitError", "FitWarning", "KernelFallbackWarning", "MollifiedActivation", "NoiseModule", "NoisyGRU",
    "NoisyGRUCell", "NoisyHardSigmoid", "NoisyHardTanh", "NoisyLSTM", "NoisyLSTMCell", "Replacement", "Report",
    "Rule", "SelectionError", "SelectionWarning", "Site", "StochasticSkip", "SurgeonError", "SurgeonWarning",
    "SurgeryError", "SurgeryRecord", "TraceFallbackWarning", "__version__", "apply_surgery", "convert", "dct",
    "export_onnx", "fwht", "idct", "load", "mollify", "noisify", "onnx_latency", "records", "report", "save",
    "from_pretrained", "save_pretrained",
]
