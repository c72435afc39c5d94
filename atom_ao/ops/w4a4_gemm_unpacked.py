"""The W4A4 GEMM for large M: nibbles unpacked to INT8 in memory first, then an INT8 GEMM.

At large M the packed kernel (``w4a4_gemm``) is compute-bound on its own main loop: every tile
re-unpacks the nibbles of its weight and activation tiles in registers and stores the unpacked
INT8 operands to shared memory itself (~400 TOPS at M = 4096, 0.55-0.6x bf16 on H100 and H200).
Here two cheap memory-bound passes
unpack the activations and the weights into transient INT8 buffers (one byte per code, the
same element order as the reference: group g holds the low nibbles, then the high ones), and
the GEMM reads plain INT8 tiles that feed the tensor cores directly, one whole group (K = group
size) per dot. The math is the packed kernel's to the bit: the same INT32 group sums, scaled in
the same order. The weight's INT8 copy lives only for the call (N x K bytes). H200, M = 4096:
~530 TOPS (0.77-0.81x bf16); what bounds it now is the per-group INT32 -> FP32 scaling, not the
loads (``benchmarks/explore_large_m.py``: the same loop without scales 875 TOPS, one INT32
accumulator 1201).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from atom_ao.ops.gemm_tiles import group_sum_to_f32, grouped_tile, m_bucket, outlier_block

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _unpack_rows_kernel(src_ptr, dst_ptr, R, G, stride_s, stride_d,
                        HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    """(R, G * HALF) packed bytes -> (R, G * 2 * HALF) INT8 codes, group by group."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    grp = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    j = tl.arange(0, HALF)
    ok = (rows < R)[:, None, None] & (grp < G)[None, :, None]
    rows64 = rows.to(tl.int64)[:, None, None]
    b = tl.load(src_ptr + rows64 * stride_s + grp[None, :, None] * HALF + j[None, None, :], mask=ok, other=0)
    b = b.to(tl.int8, bitcast=True)
    dst = dst_ptr + rows64 * stride_d + grp[None, :, None] * (2 * HALF) + j[None, None, :]
    tl.store(dst, (b << 4) >> 4, mask=ok)
    tl.store(dst + HALF, b >> 4, mask=ok)


def unpack_int4_rows(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """(R, G * group_size / 2) uint8 -> (R, G * group_size) int8 codes in reference order."""
    r, kb = packed.shape
    half = group_size // 2
    groups = kb // half
    out = torch.empty((r, groups * group_size), dtype=torch.int8, device=packed.device)
    if r == 0 or groups == 0:
        return out
    block_r, block_g = (4, 2) if INTERPRET else (16, max(1, 1024 // half))
    grid = (triton.cdiv(r, block_r), triton.cdiv(groups, block_g))
    wrap_triton(_unpack_rows_kernel)[grid](packed, out, r, groups, packed.stride(0), out.stride(0),
                                           HALF=half, BLOCK_R=block_r, BLOCK_G=block_g, num_warps=4)
    return out


@triton.jit
def _int8_group_gemm_kernel_jit(
    a_ptr, as_ptr, ao_ptr, aos_ptr,
    w_ptr, ws_ptr, wo_ptr, wos_ptr,
    bias_ptr, out_ptr,
    M, N, G, N_OUT, M_BUCKET,
    stride_am, stride_asm, stride_aom,
    stride_wn, stride_wsn, stride_won,
    stride_om,
    stride_asg, stride_wsg,  # the scales' group strides (token scales: group-major, see empty_outputs)
    GS: tl.constexpr,  # group size: the K of one dot
    BLOCK_O: tl.constexpr,
    HAS_OUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH_SCALES: tl.constexpr,
):
    # grouped tile order: neighbouring programs share weight tiles in L2
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # rows past the end read row (i mod M): unmasked loads the pipeliner streams into the dots;
    # those rows are never stored
    rows_m = (offs_m % M).to(tl.int64)
    rows_n = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, GS)
    a_ptrs = a_ptr + rows_m[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + rows_n[None, :] * stride_wn + offs_k[:, None]  # (GS, BLOCK_N): W^T tile, K-major
    as_ptrs = as_ptr + rows_m * stride_asm
    ws_ptrs = ws_ptr + rows_n * stride_wsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH_SCALES:
        # the group's scales are loaded one group ahead, into registers: the pipeliner streams
        # the dot operands, not these small gathers
        sa = tl.load(as_ptrs)
        sw = tl.load(ws_ptrs)
        for g in range(0, G):
            nxt = tl.minimum(g + 1, G - 1)
            sa_next = tl.load(as_ptrs + nxt * stride_asg)
            sw_next = tl.load(ws_ptrs + nxt * stride_wsg)
            dot = tl.dot(tl.load(a_ptrs + g * GS), tl.load(w_ptrs + g * GS), out_dtype=tl.int32)
            acc = acc + group_sum_to_f32(dot) * sa[:, None] * sw[None, :]
            sa, sw = sa_next, sw_next
    else:
        for g in range(0, G):
            a = tl.load(a_ptrs + g * GS)
            w = tl.load(w_ptrs + g * GS)
            sa = tl.load(as_ptrs + g * stride_asg)
            sw = tl.load(ws_ptrs + g * stride_wsg)
            dot = tl.dot(a, w, out_dtype=tl.int32)
            acc = acc + group_sum_to_f32(dot) * sa[:, None] * sw[None, :]

    if HAS_OUT:  # the INT8 outlier block: the last K step, with per-token / per-row scales
        offs_o = tl.arange(0, BLOCK_O)
        dot_o = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for o0 in range(0, N_OUT, BLOCK_O):
            mask_o = (o0 + offs_o) < N_OUT
            ao = tl.load(ao_ptr + rows_m[:, None] * stride_aom + (o0 + offs_o)[None, :], mask=mask_o[None, :], other=0)
            wo = tl.load(wo_ptr + rows_n[None, :] * stride_won + (o0 + offs_o)[:, None], mask=mask_o[:, None], other=0)
            dot_o = tl.dot(ao, wo, dot_o, out_dtype=tl.int32)
        sao = tl.load(aos_ptr + rows_m)
        swo = tl.load(wos_ptr + rows_n)
        acc += dot_o.to(tl.float32) * sao[:, None] * swo[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows_n).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# (BLOCK_M, BLOCK_N, warps, stages, prefetch scales). H200, M=4096 (explore_large_m.py, before the
# fast conversion): 64x128 4 warps 3 stages 520 TOPS, 128x128 8 warps 402, 128x256 255.
_CONFIGS = [
    (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 128, 8, 3, False), (128, 128, 8, 3, True),
    (64, 128, 4, 4, True), (128, 128, 8, 4, True),
]


_KERNEL = None if INTERPRET else triton.autotune(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8, "PREFETCH_SCALES": p}, num_warps=w,
                           num_stages=s) for bm, bn, w, s, p in _CONFIGS],
    key=["M_BUCKET", "N", "G", "N_OUT"],
)(_int8_group_gemm_kernel_jit)


def int8_group_gemm(a8, a_scale, a_outliers, a_outlier_scale, w8, w_scale, w_outliers, w_outlier_scale,
                    bias, group_size: int, out: torch.Tensor) -> torch.Tensor:
    """out = unpacked INT8 activations x unpacked INT8 weights^T, group-scaled, + outliers, + bias."""
    m, n = out.shape
    n_out = a_outliers.shape[1]
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    if INTERPRET:
        kernel, meta = _int8_group_gemm_kernel_jit, {"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 2, "PREFETCH_SCALES": m % 2 == 1}
    else:
        kernel, meta = _KERNEL, {}
    wrap_triton(kernel)[grid](
        a8, a_scale, a_outliers, a_outlier_scale,
        w8, w_scale, w_outliers, w_outlier_scale,
        bias if bias is not None else a_scale, out,
        m, n, a_scale.shape[1], n_out, m_bucket(m, 8192),
        a8.stride(0), a_scale.stride(0), max(a_outliers.stride(0), 1),
        w8.stride(0), w_scale.stride(0), max(w_outliers.stride(0), 1),
        out.stride(0),
        a_scale.stride(1), w_scale.stride(1),
        GS=group_size,
        BLOCK_O=min(64, outlier_block(n_out)),  # 128: 40-244 bytes of spills (sm_90a ptxas)
        HAS_OUT=n_out > 0, HAS_BIAS=bias is not None,
        **meta,
    )
    return out


def w4a4_gemm_unpacked(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                       w_outlier_scale, bias, group_size: int, out: torch.Tensor) -> torch.Tensor:
    """Unpack both operands to INT8 (transient buffers) and run the INT8 group GEMM into ``out``."""
    a8 = unpack_int4_rows(a_packed, group_size)
    w8 = unpack_int4_rows(w_packed, group_size)
    return int8_group_gemm(a8, a_scale, a_outliers, a_outlier_scale, w8, w_scale, w_outliers, w_outlier_scale,
                           bias, group_size, out)
