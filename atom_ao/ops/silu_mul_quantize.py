"""``atom_ao::silu_mul_quantize``: a gated MLP's ``silu(gate) * up`` fused with the Atom
activation quantizer of down_proj's input (one pass over gate and up, nothing materialised).

With ``atom_ao.fold.fold_mlp_permutations`` applied, down_proj's permutation is the identity and
the kernel's gathers read consecutive channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from atom_ao.format import quantize_activation_ref
from atom_ao.ops.fused_quantize import SILU_MUL, check_args, fused_quantize_triton


def silu_mul_quantize_ref(gate, up, perm, n_outliers, group_size, clip_ratio, asymmetric=False):
    """``quantize_activation(silu(gate) * up)`` in plain PyTorch (silu rounded to the input dtype)."""
    return quantize_activation_ref(F.silu(gate) * up, perm, n_outliers, group_size, clip_ratio, asymmetric)


def _check(gate: torch.Tensor, up: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int) -> None:
    check_args("silu_mul_quantize", gate, perm, n_outliers, group_size)
    if up.shape != gate.shape or up.dtype != gate.dtype:
        raise ValueError(f"silu_mul_quantize: up is {tuple(up.shape)} {up.dtype}, gate is "
                         f"{tuple(gate.shape)} {gate.dtype}; they must match")


def silu_mul_quantize_triton(gate, up, perm, n_outliers, group_size, clip_ratio, kernel=None, asymmetric=False):
    """Launch the fused Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1);
    ``kernel`` "stream" / "tile" overrides the default choice (``atom_ao.ops.fused_quantize``)."""
    _check(gate, up, perm, n_outliers, group_size)
    return fused_quantize_triton(SILU_MUL, gate, up, None, perm, 0.0, n_outliers, group_size, clip_ratio,
                                 False, gate.dtype, kernel, asymmetric)


@triton_op("atom_ao::silu_mul_quantize", mutates_args=())
def silu_mul_quantize(
    gate: torch.Tensor, up: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float,
    asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, K) gate and up -> the four outputs of ``quantize_activation`` of ``silu(gate) * up``.

    CUDA runs the fused Triton kernel; other devices run the reference.
    """
    if gate.is_cuda:
        return silu_mul_quantize_triton(gate, up, perm, n_outliers, group_size, clip_ratio, asymmetric=asymmetric)
    _check(gate, up, perm, n_outliers, group_size)
    return silu_mul_quantize_ref(gate, up, perm, n_outliers, group_size, clip_ratio, asymmetric)
