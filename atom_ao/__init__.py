"""atom_ao: Atom (MLSys 2024) W4A4 quantization for PyTorch, in torchao's style.

    from torchao.quantization import quantize_
    from atom_ao import atom_config
    quantize_(model, atom_config())
"""

from atom_ao.config import AtomConfig, atom_config
from atom_ao.tensor import AtomQuantTensor
from atom_ao.observer import AtomObservedLinear
import atom_ao.handler  # noqa: F401  (registers the quantize_ handler)
from atom_ao.calibration import calibrate, quantize_calibrated
from atom_ao.serialization import load_quantized, save_quantized
from atom_ao.hf import from_pretrained, save_pretrained
from atom_ao.unwrap import AtomLinear, unwrap_weights, wrap_weights
from atom_ao.fuse import AtomProjection, FusedProjections, fuse_projections, unfuse_projections
from atom_ao.generation import generate, greedy_decoding

__all__ = [
    "AtomConfig",
    "atom_config",
    "AtomQuantTensor",
    "AtomObservedLinear",
    "calibrate",
    "quantize_calibrated",
    "save_quantized",
    "load_quantized",
    "save_pretrained",
    "from_pretrained",
    "AtomLinear",
    "unwrap_weights",
    "wrap_weights",
    "AtomProjection",
    "FusedProjections",
    "fuse_projections",
    "unfuse_projections",
    "generate",
    "greedy_decoding",
]
__version__ = "0.1.0"
