"""torch.library ops of atom_ao (namespace ``atom_ao``).

Each op lives in its own file beside its plain-PyTorch reference (``atom_ao.format``) and,
where one exists, its Triton kernel. Importing this package registers them.
"""

from atom_ao.ops.quantize_activation import quantize_activation
from atom_ao.ops.w4a4_gemm import w4a4_gemm
from atom_ao.ops.rmsnorm_quantize import rmsnorm_quantize
from atom_ao.ops.silu_mul_quantize import silu_mul_quantize

__all__ = ["quantize_activation", "w4a4_gemm", "rmsnorm_quantize", "silu_mul_quantize"]
