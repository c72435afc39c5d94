"""``atom_ao::w4a4_gemm``: packed INT4 x INT4 over normal groups plus the INT8 outlier block."""

from __future__ import annotations

import torch
from torch.library import triton_op

from atom_ao.format import w4a4_gemm_ref


@triton_op("atom_ao::w4a4_gemm", mutates_args=())
def w4a4_gemm(
    a_packed: torch.Tensor,
    a_scale: torch.Tensor,
    a_outliers: torch.Tensor,
    a_outlier_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_outliers: torch.Tensor,
    w_outlier_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(M, N) = activations (from ``quantize_activation``) x quantized weight^T (+ bias)."""
    return w4a4_gemm_ref(
        a_packed, a_scale, a_outliers, a_outlier_scale,
        w_packed, w_scale, w_outliers, w_outlier_scale,
        bias, group_size, out_dtype,
    )
