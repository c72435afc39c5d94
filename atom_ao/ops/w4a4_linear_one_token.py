"""``atom_ao::w4a4_linear_one_token``: quantize one token and multiply it by a W4A4 weight, in one kernel.

The two ops ``quantize_activation`` then ``w4a4_gemm`` as one: at M = 1 the quantizer is a
kernel of ~2.9 us of launch and dependent-load latency for 8 KB of work (H200, a Llama-2-7B
decode step runs 128 of them), so the dp4a stream kernel (``w4a4_gemv``) quantizes its share of
the token itself with the quantizer's arithmetic: the same codes and scales, the same output bits
as the two ops on CUDA. Other devices run the two references.
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from atom_ao.format import k_normal_padded, quantize_activation_ref, w4a4_gemm_ref
from atom_ao.ops.quantize_activation import check_quantize_args
from atom_ao.ops.w4a4_gemm import MAX_GROUP_SIZE, _finish_splits, _sm_count, _workspace, check_operands
from atom_ao.ops.w4a4_gemv import MAX_FUSED_OUTLIERS, gemv_split_k, launch_gemv_quantize


def check_one_token_args(x, perm, n_outliers, group_size, w_packed, w_scale, w_outliers, w_outlier_scale, bias):
    """The quantizer's and the GEMM's checks, on one token."""
    what = "w4a4_linear_one_token"
    check_quantize_args(what, x, perm, n_outliers, group_size)
    if x.shape[0] != 1:
        raise ValueError(f"{what}: takes one token (1, K), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{what}: x must be fp16/bf16/fp32, got {x.dtype}")
    if perm.dtype != torch.int32 or perm.device != x.device:
        raise ValueError(f"{what}: perm must be int32 on {x.device}, got {perm.dtype} on {perm.device}")
    # the weight's shapes expected from x: its K channels, n_outliers of them in INT8
    n, groups = w_packed.shape[0], k_normal_padded(x.shape[1], n_outliers, group_size) // group_size
    expect = [("w_packed", w_packed, (n, groups * group_size // 2), torch.uint8),
              ("w_scale", w_scale, (n, groups), torch.float32),
              ("w_outliers", w_outliers, (n, n_outliers), torch.int8),
              ("w_outlier_scale", w_outlier_scale, (n,), torch.float32)]
    if bias is not None:
        expect.append(("bias", bias, (n,), bias.dtype))
    check_operands(what, expect, "x", x.device)


def fused_fits(n_outliers: int, group_size: int) -> bool:
    """The kernel's limits: the outlier block in one step, a group's sum exact in float32."""
    return n_outliers <= MAX_FUSED_OUTLIERS and group_size <= MAX_GROUP_SIZE


def w4a4_linear_one_token_triton(x, perm, n_outliers, group_size, clip_ratio, w_packed, w_scale, w_outliers,
                                 w_outlier_scale, bias, out_dtype, *, splits=None):
    """Launch the fused kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    check_one_token_args(x, perm, n_outliers, group_size, w_packed, w_scale, w_outliers, w_outlier_scale, bias)
    if not fused_fits(n_outliers, group_size):
        raise ValueError(f"w4a4_linear_one_token: takes n_outliers <= {MAX_FUSED_OUTLIERS} and group_size <= "
                         f"{MAX_GROUP_SIZE}, got {n_outliers} / {group_size}")
    n, groups = w_packed.shape[0], w_scale.shape[1]
    out = torch.empty((1, n), dtype=out_dtype, device=x.device)
    if n == 0:
        return out
    if splits is None:
        splits = gemv_split_k(n, groups, _sm_count(x.device))
    ws = _workspace(out, splits)
    launch_gemv_quantize(x.contiguous(), perm.contiguous(), n_outliers, clip_ratio, w_packed.contiguous(),
                         w_scale.contiguous(), w_outliers.contiguous(), w_outlier_scale, bias, ws, group_size, splits)
    return _finish_splits(ws, out)


@triton_op("atom_ao::w4a4_linear_one_token", mutates_args=())
def w4a4_linear_one_token(
    x: torch.Tensor,
    perm: torch.Tensor,
    n_outliers: int,
    group_size: int,
    clip_ratio: float,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_outliers: torch.Tensor,
    w_outlier_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(1, N) = one token x (1, K), quantized as ``quantize_activation`` does, times the quantized
    weight^T (+ bias). CUDA runs one Triton kernel; other devices the two references."""
    if x.is_cuda:
        return w4a4_linear_one_token_triton(x, perm, n_outliers, group_size, clip_ratio, w_packed, w_scale,
                                            w_outliers, w_outlier_scale, bias, out_dtype)
    check_one_token_args(x, perm, n_outliers, group_size, w_packed, w_scale, w_outliers, w_outlier_scale, bias)
    a = quantize_activation_ref(x, perm, n_outliers, group_size, clip_ratio)
    return w4a4_gemm_ref(*a, w_packed, w_scale, w_outliers, w_outlier_scale, bias, group_size, out_dtype)
