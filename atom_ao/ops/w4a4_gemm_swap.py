"""The W4A4 GEMM for small M (2..64 tokens): the weight tile is the MMA's M side ("swap AB").

The tile kernel (``w4a4_gemm``) computes out = A W^T with the tokens as the MMA's M side: below
64 tokens that is Hopper's ``mma.sync`` (a wgmma needs 64 rows), and the unpacked weight tile,
the big operand, travels through shared memory to reach its operand layout. Here the kernel
computes out^T = W A^T: 64 or 128 weight rows per tile fill the wgmma's M side, the tokens (16..64)
are its N side, so the weights are unpacked and multiplied from registers and only the small
activation tile goes through shared memory. Offline count for sm_90a (Triton 3.9 + ptxas,
main loop per group, per byte of weights streamed): 0.37 -> 0.17 instructions at 16 tokens,
0.42 -> 0.22 at 32, 0.44 -> 0.32-0.39 at 64. Measured, GEMM alone, H200 (explore_small_m, best
split): Llama-2-7B qkv 17.7 -> 13.9 us at M = 16, 24.9 -> 16.9 at 32; o 10.0 -> 7.8 at 16;
gate/up 38.1 -> 27.6 at 32; at M = 64 5-15% (down 24.1 -> 23.6, 70B o 39.1 -> 31.6). (Those
runs predate the 16 x code unpack of ``gemm_tiles``, which cut the 16-token loop 346 -> 246
instructions a group offline.)

Same math as the tile kernel to the bit: per group two INT8 dots (low and high nibbles, as
16 x code), the INT32 group sum to FP32, times the token (/ 256) and weight-row scales; the INT8
outlier block as the last K step; optional bias; split-K into a float32 workspace.

Tried and dropped (H200, session 14): the group loop as ``tl.range(num_stages=3)``, which also
pipelines the group scales (plain ``range`` pipelines only the tiles feeding the dots, and Nsight
Compute showed the M = 1 kernel's warps waiting on global loads): slower on every Llama-2-7B
linear, gate/up 21.8 -> 23.9 us at M = 1 and 35.0 -> 38.3 at M = 64 (same bits). Session 27
(M = 64, cold weights, ``explore_decode_gemm.py``): two groups' loads a main-loop step were
slower at every shape's best split (removed). The token scales come group-major from the
quantizers (``quantize_activation.empty_outputs``), 2-5% faster than row-major at each shape's
best split in that run; session 28 (M = 16 and 64) found the same at M = 64 (qkv 19.9 -> 19.0 us,
down 20.6 -> 18.4, gate/up 34.3 -> 32.5) and a wash at 16. Loading a group's scales a step ahead
or through ``tl.range``'s pipeline (sessions 27-28, ``results/h200/session28_explore_scales``):
with the production layout (group-major token scales, row-major weight scales) no faster at any
shape's best split but Llama-2-7B down at 16 tokens (12.3 -> 12.0 us); at 64 o equal (9.7) and
the rest slower (qkv 19.0 -> 19.1, gate/up 32.5 -> 36.0, down 18.4 -> 19.1); removed.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from atom_ao.ops.gemm_tiles import SCALE_256, group_sum_x256_to_f32, no_empty_split, split_share, unpack_int4_x16

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SWAP_MAX_M = 64  # the largest token tile offered below

# (BLOCK_N weight rows, BLOCK_M tokens, warps, stages) per token regime; one autotuner each.
# H200, benchmarks/explore_small_m.py (results/h200/explore_small_m_*): 256-row tiles on 8 warps
# were slower everywhere and are gone; 128x64 on 4 warps takes 255 registers.
# Up to 16 tokens one config: with the weights read from HBM, as in a model (explore_decode_gemm,
# H200, session 12), 64-row tiles at the split ``swap_split_k`` gives them were the fastest on
# all four Llama-2-7B linears at M = 1 and 16 (the autotuner, timing one L2-resident weight, took 128).
# 33-64 tokens one config too: in gpt.py's compiled Llama-2-7B step at batch 64 (H200, session 30,
# ``explore_swap_in_model.py``, each form compiled afresh) the swap GEMM took 2504 us a step on
# 64x64 alone, 2535 autotuned over the three configs once offered, 2802 on 128x64 / 8 warps and
# 3262 on 64x32; other autotuned runs took 2637 and 2735 (the pick, timed on one weight at
# compile time and cached on disk by Inductor, differs from run to run).
_SWAP_REGIMES = {
    16: [(64, 16, 4, 3)],
    32: [(128, 32, 4, 3), (64, 32, 4, 3)],
    64: [(64, 64, 4, 3)],
}
LONG_SHARE = 8  # groups a split keeps after the extra doubling past 32 tokens (swap_split_k)
# With split-K, the outlier block only in the first split, which counts it as this many groups of
# its share (0: every split runs the block, the later ones on zeroed tokens, and the shares are
# even). The block reads a row's N_OUT = 128 INT8 weights, the bytes of two packed groups; on
# Llama-2-7B at M = 64 o (4 splits) and down (8) a share is 8-11 groups. H200, session 30:
# explore_decode_gemm --out-share 0,2,3 at the rule's splits, M = 64: o 9.72 / 9.43 / 9.06 us,
# down 17.8 / 16.5 / 16.4, qkv 19.0 / 18.6 (0 / 2), gate/up (1 split) unchanged; M = 16 o 6.91 /
# 6.27 / 6.11, down 12.3 / 11.5 / 11.6. In gpt.py's compiled step at batch 64 (64x64 tiles) the
# swap GEMM went 2504 -> 2411 us a step (0 -> 3; results/h200/session30_swap_model_*).
OUT_SHARE = 3
TYPICAL_BLOCK_N = 128  # for the split-K choice, made before the autotuner picks a config
# the largest tile offered (powers of two, so a multiple of every other): N and M multiples of these
# leave every tile full, and the kernel's main loop skips its masks (EVEN_N / EVEN_M)
FULL_N = max(bn for configs in _SWAP_REGIMES.values() for bn, _, _, _ in configs)
FULL_M = max(bm for configs in _SWAP_REGIMES.values() for _, bm, _, _ in configs)


def swap_split_k(m: int, n: int, groups: int, sms: int) -> int:
    """Splits of the K groups (1 = none): double while the weight tiles leave SMs idle, keeping
    >= 4 groups a share. Against every forced split timed on the H200 (explore_small_m: Llama-2-7B
    qkv / o / gate-up / down and 70B o, M = 2, 16, 32) the rule's pick is the fastest or within 5%
    of it.

    Up to 16 tokens (64-row tiles) the target is 3 programs a SM and a share may be 3 groups: with
    the weights read from HBM (explore_decode_gemm, H200) that is the best split timed for each
    Llama-2-7B linear at M = 1 and 16 (qkv 4, o 8, gate/up 2, down 8; unfused gate 4).

    Past 32 tokens a split doubles while 64-row tiles times twice the splits stay within 3 programs
    a SM (the 64x64 tile holds 167 registers: 3 fit a SM). Cold weights, H200 (explore_decode_gemm,
    session 23, 64x64 tiles, M = 64): qkv 2 splits 22.3-22.5 us against 26.2 for 1, the unfused
    gate / up 2 splits 22.1 against 26.2, the fused gate/up stays at 1 (34.4 against 42.4), o and
    down at 4 (the earlier target, half the SMs of 128-row tiles, gave qkv and gate 1). Not timed:
    Llama-3-8B's fused qkv (6144 rows) now takes 4 splits, 2 before. Session 28, with the token
    scales group-major, down was faster at 8 (the extra doubling below); not timed: the 8192-row
    shapes (Llama-2-70B o), which it takes from 2 splits to 4."""
    small = m <= 16
    tiles = triton.cdiv(n, TYPICAL_BLOCK_N if 16 < m <= 32 else 64) * triton.cdiv(m, SWAP_MAX_M)
    # programs (tiles x splits) below which the split doubles: 3 a SM, one a SM, and past 32 tokens
    # whatever keeps twice the splits within 3 a SM (2 x programs <= 3 x SMs)
    target = 3 * sms if small else sms if m <= 32 else 3 * sms // 2 + 1
    min_share = 3 if small else 4
    splits = 1
    while tiles * splits < target and splits < 16 and groups >= 2 * splits * min_share:
        splits *= 2
    # past 32 tokens, long shares split once more while twice the programs fit 4 a SM: Llama-2-7B
    # down (85 groups) 4 -> 8 splits, 19.7 -> 18.4 us at M = 64 (H200, session 28, cold weights,
    # group-major token scales; o's 8-group shares stay at 4: 9.7 against 10.4 at 8)
    while m > 32 and 2 * tiles * splits <= 4 * sms and splits < 16 and groups >= 2 * splits * LONG_SHARE:
        splits *= 2
    return no_empty_split(groups, splits)


@triton.jit
def _group_tile(ptrs, s_ptrs, rows_ok, FULL: tl.constexpr):
    """One group's packed (rows, HALF) tile and its (rows,) scales; FULL: every row exists, no masks."""
    if FULL:
        tile, scale = tl.load(ptrs), tl.load(s_ptrs)
    else:
        tile = tl.load(ptrs, mask=rows_ok[:, None], other=0)
        scale = tl.load(s_ptrs, mask=rows_ok, other=0.0)
    return tile, scale


@triton.jit
def _share(G, SPLITS, split, OUT_SHARE: tl.constexpr):
    """``split_share``, or with OUT_SHARE the first split's share OUT_SHARE groups shorter (its
    outlier block counted as those) and the rest spread evenly; a share may be empty."""
    if OUT_SHARE == 0:
        return split_share(G, SPLITS, split)
    per = tl.cdiv(G + OUT_SHARE, SPLITS)
    g0 = tl.maximum(split * per - OUT_SHARE, 0)
    end = tl.minimum(tl.maximum((split + 1) * per - OUT_SHARE, 0), G)
    return g0, tl.maximum(end - g0, 0)


@triton.jit
def _outlier_block(acc, wo_ptr, ao_ptr, wos_ptr, aos_ptr, offs_n, offs_m, mask_n, first_m, N_OUT,
                   stride_won, stride_aom, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr):
    """acc += the INT8 outlier channels' product (tokens of ``first_m`` only: zero elsewhere)."""
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
    return acc + dot_o.to(tl.float32) * sao[None, :] * swo[:, None]


@triton.jit
def _group_math(w, sw, a, sa, acc, HALF: tl.constexpr, USE_ASM: tl.constexpr):
    """acc (out^T) += one group: two INT8 dots of the 16 x codes, the INT32 sum to float32, times
    the token scales (/ 256) and the weight rows' scales."""
    w_lo, w_hi = unpack_int4_x16(w, USE_ASM)  # 16 x codes: the dot is 256x, sa takes 1/256
    a_lo, a_hi = unpack_int4_x16(a, USE_ASM)
    dot = tl.dot(w_lo, tl.trans(a_lo), out_dtype=tl.int32)
    dot = tl.dot(w_hi, tl.trans(a_hi), dot, out_dtype=tl.int32)
    # the tile kernel's products, with the exact 1/256 on the weight rows' scales (a thread
    # holds 2 of them and 16 token scales): the same bits, 14 fewer multiplies a group
    return acc + group_sum_x256_to_f32(dot, HALF) * sa[None, :] * (sw * SCALE_256)[:, None]


@triton.jit
def _w4a4_gemm_swap_kernel_jit(
    a_ptr, as_ptr, ao_ptr, aos_ptr,
    w_ptr, ws_ptr, wo_ptr, wos_ptr,
    bias_ptr, out_ptr,
    M, N, G, N_OUT, M_BUCKET, SPLITS,
    stride_am, stride_asm, stride_aom,
    stride_wn, stride_wsn, stride_won,
    stride_om,
    stride_asg, stride_wsg,  # the scales' group strides: 1 row-major (M, G) / (N, G), M / N group-major
    HALF: tl.constexpr,  # group_size // 2: bytes per group and row
    BLOCK_O: tl.constexpr,  # outlier channels per dot
    HAS_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    # every weight-row / token tile full (N a multiple of 128, M of 64: of every BLOCK_N / BLOCK_M
    # offered): the main loop's loads go unmasked (sm_90a, 64x64 tile: 369 -> 332 instructions a
    # group and 194 -> 165 registers, 3 programs a SM instead of 2)
    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    OUT_SHARE: tl.constexpr,  # the module's OUT_SHARE: the outlier block in the first split only
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    g0, n_g = _share(G, SPLITS, split, OUT_SHARE)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    offs_k = tl.arange(0, HALF)
    # both tiles row-major with K contiguous: (BLOCK_N, HALF) weights, (BLOCK_M, HALF) tokens
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] + g0 * HALF
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] + g0 * HALF
    ws_ptrs = ws_ptr + offs_n * stride_wsn + g0 * stride_wsg
    as_ptrs = as_ptr + offs_m * stride_asm + g0 * stride_asg
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # out^T
    for g in range(0, n_g):
        w, sw = _group_tile(w_ptrs + g * HALF, ws_ptrs + g * stride_wsg, mask_n, EVEN_N)
        a, sa = _group_tile(a_ptrs + g * HALF, as_ptrs + g * stride_asg, mask_m, EVEN_M)
        acc = _group_math(w, sw, a, sa, acc, HALF, USE_ASM)

    # the outlier block and the bias belong to the first split only (masked off in the others)
    first_m = mask_m & (offs_m * 0 + split == 0)
    if HAS_OUT:
        # with OUT_SHARE the later splits skip it (their shares are longer by OUT_SHARE / (SPLITS - 1))
        if OUT_SHARE == 0 or split == 0:
            acc = _outlier_block(acc, wo_ptr, ao_ptr, wos_ptr, aos_ptr, offs_n, offs_m, mask_n, first_m, N_OUT,
                                 stride_won, stride_aom, BLOCK_N, BLOCK_M, BLOCK_O)
    if HAS_BIAS:
        first_n = mask_n & (offs_n * 0 + split == 0)
        acc += tl.load(bias_ptr + offs_n, mask=first_n, other=0.0).to(tl.float32)[:, None]
    # split-K: out_ptr is the (splits, M, N) float32 workspace, as in the tile kernel
    out_ptrs = out_ptr + split * M * N + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


def _configs(regime):
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=st)
            for bn, bm, w, st in _SWAP_REGIMES[regime]]


def swap_autotuner(configs):
    """The swap kernel autotuned over ``configs`` (triton.Config), tuned per shape and split."""
    return triton.autotune(configs=configs, key=["M_BUCKET", "N", "G", "N_OUT", "SPLITS"])(_w4a4_gemm_swap_kernel_jit)


SWAP_KERNELS = {regime: swap_autotuner(_configs(regime)) for regime in _SWAP_REGIMES}


def swap_kernel_and_meta(m: int):
    """The kernel to launch for m tokens and its fixed meta-parameters (the interpreter cannot
    autotune: one small config)."""
    if INTERPRET:
        return _w4a4_gemm_swap_kernel_jit, {"BLOCK_N": 32, "BLOCK_M": 16}
    return SWAP_KERNELS[min(r for r in _SWAP_REGIMES if m <= r)], {}
