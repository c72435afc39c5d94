"""``atom_ao::quantize_activation``: permute + dynamic per-token quantization of activations."""

from __future__ import annotations

import torch
from torch.library import triton_op

from atom_ao.format import quantize_activation_ref


@triton_op("atom_ao::quantize_activation", mutates_args=())
def quantize_activation(
    x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, K) -> (packed INT4 normal groups, their per-token scales, INT8 outliers, their scale).

    See ``atom_ao.format`` for the layout. CPU runs the reference.
    """
    return quantize_activation_ref(x, perm, n_outliers, group_size, clip_ratio)
