"""The W4A4 GEMM on the BF16 tensor cores: both operands dequantized in registers (small M).

The nibble kernels (swap, tile) run each group as INT8 dots into a fresh INT32 sum, then convert
it and apply the group's two scales: per group and output element a conversion and two
multiplies on the CUDA cores, after the MMA has finished, so the tensor cores wait on them and
they on the tensor cores. At 64 tokens that keeps the swap kernel near 1 TB/s of weights.

Here each INT4 code is turned into ``bf16(code * bf16(scale))`` in registers, weights and tokens
alike (the group's scale taken into the operand), and one BF16 dot per half-group accumulates in
the FP32 accumulator across all of K: no per-group epilogue, and the next group's dequantization
overlaps the running MMA. The cost is one rounding per operand to BF16 (8 significant bits, the
format the model's activations already have): relative error <= 2^-8 per product, where INT4
quantization itself is ~2^-3; the tests hold it to an SQNR floor against the exact reference.

Weight rows are the MMA's M side ("swap AB", as in ``w4a4_gemm_swap``): the weight tile is
dequantized and multiplied from registers, only the small token tile goes through shared memory.
The INT8 outlier block stays an exact INT8 dot with its own scales, the last K step, as in the
other kernels; optional bias; split-K into a float32 workspace.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from atom_ao.ops.gemm_tiles import split_share

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

DEQUANT_MAX_M = 64  # the largest token tile offered below

# (BLOCK_N weight rows, BLOCK_M tokens, warps, stages) per token regime; one autotuner each
_DEQUANT_REGIMES = {
    16: [(64, 16, 4, 3), (128, 16, 4, 3)],
    32: [(64, 32, 4, 3), (128, 32, 4, 3)],
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3)],
}
FULL_N = max(bn for configs in _DEQUANT_REGIMES.values() for bn, _, _, _ in configs)
FULL_M = max(bm for configs in _DEQUANT_REGIMES.values() for _, bm, _, _ in configs)

# 4 packed bytes ($4) and their 4 row scales as two bf16 pairs ($5, $6) -> the low-nibble codes
# ($0, $1) and high-nibble codes ($2, $3) times the scales, bf16 pairs. A byte goes to the low
# half of a 32-bit word and its neighbour to the high half (prmt), a nibble is masked into a
# bf16 mantissa whose value is 128 + (code ^ 8) = 136 + code (exact), minus 136 (exact), times
# the scale (one rounding, as the interpreter's float32 product rounded to bf16).
# One line: Inductor pastes a kernel's source into a triple-quoted literal without escaping.
_DEQUANT_ASM = tl.constexpr(
    "{ .reg .b32 t0, t1, u0, u1, v0, v1, v2, v3, one, off, nz; "
    "mov.b32 one, 0x3F803F80; mov.b32 off, 0xC308C308; mov.b32 nz, 0x80008000; "
    "prmt.b32 t0, $4, 0, 0x4140; prmt.b32 t1, $4, 0, 0x4342; shr.b32 u0, t0, 4; shr.b32 u1, t1, 4; "
    "and.b32 t0, t0, 0x000F000F; and.b32 t1, t1, 0x000F000F; and.b32 u0, u0, 0x000F000F; and.b32 u1, u1, 0x000F000F; "
    "xor.b32 t0, t0, 0x43084308; xor.b32 t1, t1, 0x43084308; xor.b32 u0, u0, 0x43084308; xor.b32 u1, u1, 0x43084308; "
    "fma.rn.bf16x2 v0, t0, one, off; fma.rn.bf16x2 v1, t1, one, off; "
    "fma.rn.bf16x2 v2, u0, one, off; fma.rn.bf16x2 v3, u1, one, off; "
    "fma.rn.bf16x2 $0, v0, $5, nz; fma.rn.bf16x2 $1, v1, $6, nz; "
    "fma.rn.bf16x2 $2, v2, $5, nz; fma.rn.bf16x2 $3, v3, $6, nz; }"
)


@triton.jit
def dequant_int4_bf16(packed, scale):
    """(rows, HALF) packed groups and their (rows,) float32 scales -> (low, high) half-groups as
    bf16 ``code * bf16(scale)`` tiles (low nibble: elements 0..HALF-1 of the group). GPU only."""
    s = tl.broadcast_to(scale.to(tl.bfloat16)[:, None], packed.shape)
    return tl.inline_asm_elementwise(_DEQUANT_ASM, "=r,=r,=r,=r,r,r,r", [packed, s],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


@triton.jit
def dequant_int4_bf16_values(packed, scale):
    """``dequant_int4_bf16``'s values as float32 tiles, without inline asm (the interpreter: its
    bf16 dots and float -> bf16 casts are not the GPU's), rounded to nearest even by hand."""
    lo = (packed << 4).to(tl.int8, bitcast=True) >> 4  # sign-extended codes
    hi = packed.to(tl.int8, bitcast=True) >> 4
    sf = _round_to_bf16(scale.to(tl.float32))[:, None]
    return _round_to_bf16(lo.to(tl.float32) * sf), _round_to_bf16(hi.to(tl.float32) * sf)


@triton.jit
def _round_to_bf16(x):
    """float32 -> the nearest bf16 (ties to even), kept in float32 (finite inputs)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tile(ptrs, s_ptrs, rows_ok, FULL: tl.constexpr):
    if FULL:
        return tl.load(ptrs), tl.load(s_ptrs)
    return tl.load(ptrs, mask=rows_ok[:, None], other=0), tl.load(s_ptrs, mask=rows_ok, other=0.0)


@triton.jit
def _w4a4_gemm_dequant_kernel_jit(
    a_ptr, as_ptr, ao_ptr, aos_ptr,
    w_ptr, ws_ptr, wo_ptr, wos_ptr,
    bias_ptr, out_ptr,
    M, N, G, N_OUT, M_BUCKET, SPLITS,
    stride_am, stride_asm, stride_aom,
    stride_wn, stride_wsn, stride_won,
    stride_om,
    HALF: tl.constexpr, BLOCK_O: tl.constexpr,
    HAS_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    g0, n_g = split_share(G, SPLITS, split)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    offs_k = tl.arange(0, HALF)
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] + g0 * HALF
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] + g0 * HALF
    ws_ptrs = ws_ptr + offs_n * stride_wsn + g0
    as_ptrs = as_ptr + offs_m * stride_asm + g0
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # out^T
    for g in range(0, n_g):
        w, sw = _tile(w_ptrs + g * HALF, ws_ptrs + g, mask_n, EVEN_N)
        a, sa = _tile(a_ptrs + g * HALF, as_ptrs + g, mask_m, EVEN_M)
        if USE_ASM:
            w_lo, w_hi = dequant_int4_bf16(w, sw)
            a_lo, a_hi = dequant_int4_bf16(a, sa)
            acc = tl.dot(w_lo, tl.trans(a_lo), acc)
            acc = tl.dot(w_hi, tl.trans(a_hi), acc)
        else:  # float32 tiles of the same bf16 values: exact products
            w_lo, w_hi = dequant_int4_bf16_values(w, sw)
            a_lo, a_hi = dequant_int4_bf16_values(a, sa)
            acc = tl.dot(w_lo, tl.trans(a_lo), acc, input_precision="ieee")
            acc = tl.dot(w_hi, tl.trans(a_hi), acc, input_precision="ieee")

    # the outlier block and the bias belong to the first split only (masked off in the others)
    first_m = mask_m & (offs_m * 0 + split == 0)
    if HAS_OUT:
        offs_o = tl.arange(0, BLOCK_O)
        dot_o = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
        for o0 in range(0, N_OUT, BLOCK_O):
            mask_o = (o0 + offs_o) < N_OUT
            wo = tl.load(wo_ptr + offs_n[:, None] * stride_won + (o0 + offs_o)[None, :],
                         mask=mask_n[:, None] & mask_o[None, :], other=0)
            ao = tl.load(ao_ptr + offs_m[:, None] * stride_aom + (o0 + offs_o)[None, :],
                         mask=first_m[:, None] & mask_o[None, :], other=0)
            dot_o = tl.dot(wo, tl.trans(ao), dot_o, out_dtype=tl.int32)
        swo = tl.load(wos_ptr + offs_n, mask=mask_n, other=0.0)
        sao = tl.load(aos_ptr + offs_m, mask=first_m, other=0.0)  # 0, not 0 * inf, in later splits
        acc += dot_o.to(tl.float32) * sao[None, :] * swo[:, None]
    if HAS_BIAS:
        first_n = mask_n & (offs_n * 0 + split == 0)
        acc += tl.load(bias_ptr + offs_n, mask=first_n, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + split * M * N + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


def _configs(regime):
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=st)
            for bn, bm, w, st in _DEQUANT_REGIMES[regime]]


DEQUANT_KERNELS = {
    regime: triton.autotune(configs=_configs(regime), key=["M_BUCKET", "N", "G", "N_OUT", "SPLITS"])(
        _w4a4_gemm_dequant_kernel_jit)
    for regime in _DEQUANT_REGIMES
}


def dequant_kernel_and_meta(m: int):
    """The kernel to launch for m tokens and its fixed meta-parameters (the interpreter cannot
    autotune: one small config)."""
    if INTERPRET:
        return _w4a4_gemm_dequant_kernel_jit, {"BLOCK_N": 32, "BLOCK_M": 16}
    return DEQUANT_KERNELS[min(r for r in _DEQUANT_REGIMES if m <= r)], {}
