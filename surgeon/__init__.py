"""surgeon: model surgery for PyTorch — structured linear layers and noisy/mollified activations."""

from surgeon.layers import ACDCLinear, FastfoodLinear
from surgeon.ops import dct, fwht, idct

__version__ = "0.1.0"

__all__ = ["ACDCLinear", "FastfoodLinear", "__version__", "dct", "fwht", "idct"]
