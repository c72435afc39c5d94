"""The W4A4 GEMM for one token (decode at batch 1): a stream over the weights on the CUDA cores.

At M = 1 every weight byte is used once, so the kernel's only job is to keep enough weight bytes
in flight to read at HBM speed. No tensor cores, and shared memory only where Triton moves a
tile between layouts: all operands stay in 32-bit words (8 nibbles), the nibbles become signed bytes times 16 by word-wide bit operations
(``gemm_tiles``), and dp4a (4 INT8 products into INT32 a instruction) does the group dots.

A step takes CHUNK groups of BLOCK_N weight rows as one (BLOCK_N, CHUNK, WORDS) tile, together
with their weight scales, the token's words and its scales; the next step's loads are issued
before this step's math (register double-buffering), so each warp has two steps of weight bytes
in flight and nothing in the loop waits on a load issued the same step. The float32 group
products are kept per (row, group slot) and summed once at the end.

Same math as the tile kernels: a group's INT32 dot of 16 x codes, exact in float32, times the
token's group scale / 256 and the row's group scale; the INT8 outlier block after the groups; bias;
split-K into the (splits, 1, N) float32 workspace. Only the order of the float32 sums over groups
differs from the tile kernels (slot-wise, then across slots).

H200, cold weights, against the swap kernel (results/h200/explore_gemv_ahead_session15.log):
Llama-2-7B qkv 14.1 -> 11.3 us, o 8.3 -> 7.1, gate/up 21.9 -> 15.8 (3.1 TB/s of weights), down
13.1 -> 11.2; Llama-3-8B gate/up 27.6 -> 23.5, down 15.5 -> 12.7 (each at the split of gemv_split_k). Nsight Compute (gate/up, 16-row
tiles): warps wait on global loads (long scoreboard 14 of 19 cycles an instruction), 54% occupancy.
Tried and dropped (same run): loads two steps ahead in registers (81 -> 88-98 us over the six
shapes) and Triton's pipeliner on the step loop (3-4 stages through shared memory, 88-95 us).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from atom_ao.ops.gemm_tiles import SCALE_256, group_sum_x256_to_f32, no_empty_split, split_share
from atom_ao.ops.quantize_activation import _abs_bits, _round_clamp, _safe_inverse

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _nibbles(words):
    """int32 words of packed INT4 -> (low codes, high codes) x 16 as words of 4 signed bytes: a
    nibble in the high half of a byte, the low half zero, is the signed byte 16 x code."""
    high_halves = -252645136  # 0xF0F0F0F0 as an int32
    return (words << 4) & high_halves, words & high_halves


@triton.jit
def _dp4a(a, b, c, USE_ASM: tl.constexpr):
    """c + the sum of the 4 products of the signed bytes of a and b (elementwise, broadcasting)."""
    if USE_ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    return (c + ((a << 24) >> 24) * ((b << 24) >> 24) + ((a << 16) >> 24) * ((b << 16) >> 24)
            + ((a << 8) >> 24) * ((b << 8) >> 24) + (a >> 24) * (b >> 24))


@triton.jit
def _program_share(G, SPLITS, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """This program's split, its share of the groups (first, count), its weight rows and the group
    slots of a step. No pointer arguments: Inductor's mutation analysis of the TTIR counts every
    result of a called function as derived from all its arguments, so row offsets returned by a
    helper that also took the weight pointer would make the output store look like a store into
    the weights (Inductor then clones and copies back the whole weight every call)."""
    split = tl.program_id(1)
    g0, n_g = split_share(G, SPLITS, split)
    return split, g0, n_g, tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N), tl.arange(0, CHUNK)


@triton.jit
def _weight_ptrs(w_ptr, ws_ptr, offs_n, g0, offs_c, stride_wn, stride_wsn, WORDS: tl.constexpr):
    """The first step's weight-word (BLOCK_N, CHUNK, WORDS) and scale (BLOCK_N, CHUNK) pointers
    (only ever loaded from)."""
    w_ptrs = (w_ptr + offs_n[:, None, None] * stride_wn + (g0 + offs_c)[None, :, None] * WORDS
              + tl.arange(0, WORDS)[None, None, :])
    return w_ptrs, ws_ptr + offs_n[:, None] * stride_wsn + (g0 + offs_c)[None, :]


@triton.jit
def _weight_chunk(w_ptrs, ws_ptrs, slot, n_g, mask_n, EVEN_N: tl.constexpr):
    """One step's weight words (BLOCK_N, CHUNK, WORDS) and scales (BLOCK_N, CHUNK); group slots
    past the share read nothing."""
    ok = slot < n_g  # (CHUNK,)
    ok_w = ok[None, :, None] if EVEN_N else ok[None, :, None] & mask_n[:, None, None]
    ok_s = ok[None, :] if EVEN_N else ok[None, :] & mask_n[:, None]
    return tl.load(w_ptrs, mask=ok_w, other=0), tl.load(ws_ptrs, mask=ok_s, other=0.0)


@triton.jit
def _chunk(w_ptrs, ws_ptrs, a_ptrs, as_ptrs, slot, n_g, mask_n, EVEN_N: tl.constexpr):
    """One step's loads: the weights' (``_weight_chunk``), the token's words (CHUNK, WORDS) and
    scales (CHUNK,)."""
    w, sw = _weight_chunk(w_ptrs, ws_ptrs, slot, n_g, mask_n, EVEN_N)
    ok = slot < n_g
    return w, sw, tl.load(a_ptrs, mask=ok[:, None], other=0), tl.load(as_ptrs, mask=ok, other=0.0)


@triton.jit
def _chunk_math(w, sw, a, sa, acc, WORDS: tl.constexpr, USE_ASM: tl.constexpr):
    """acc (BLOCK_N, CHUNK) += each group's INT32 dot (exact in float32) x its token and row scales."""
    a_lo, a_hi = _nibbles(a)
    w_lo, w_hi = _nibbles(w)
    part = _dp4a(w_lo, a_lo[None, :, :], tl.zeros(w.shape, tl.int32), USE_ASM)
    part = _dp4a(w_hi, a_hi[None, :, :], part, USE_ASM)
    dot = group_sum_x256_to_f32(tl.sum(part, axis=2), WORDS * 4)  # 256 x the group's dot
    return acc + dot * (sa * SCALE_256)[None, :] * sw


@triton.jit
def _w4a4_gemv_kernel(
    a_ptr, as_ptr, ao_ptr, aos_ptr,  # a_ptr, ao_ptr, w_ptr, wo_ptr: int32 views (4 bytes a word)
    w_ptr, ws_ptr, wo_ptr, wos_ptr,
    bias_ptr, out_ptr,
    N, G, N_OUT_W, SPLITS,
    stride_wn, stride_wsn, stride_won,
    WORDS: tl.constexpr,  # int32 words per group and row (group_size / 8)
    BLOCK_OW: tl.constexpr,  # outlier words per step
    HAS_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    EVEN_N: tl.constexpr,  # N a multiple of BLOCK_N: no row masks
    BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    split, g0, n_g, offs_n, offs_c = _program_share(G, SPLITS, BLOCK_N, CHUNK)
    mask_n = offs_n < N
    w_ptrs, ws_ptrs = _weight_ptrs(w_ptr, ws_ptr, offs_n, g0, offs_c, stride_wn, stride_wsn, WORDS)
    a_ptrs = a_ptr + (g0 + offs_c)[:, None] * WORDS + tl.arange(0, WORDS)[None, :]
    as_ptrs = as_ptr + g0 + offs_c
    acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)  # per group slot, summed at the end
    cur = _chunk(w_ptrs, ws_ptrs, a_ptrs, as_ptrs, offs_c, n_g, mask_n, EVEN_N)
    for c in range(CHUNK, n_g + CHUNK, CHUNK):
        nxt = _chunk(w_ptrs + c * WORDS, ws_ptrs + c, a_ptrs + c * WORDS, as_ptrs + c, c + offs_c, n_g, mask_n, EVEN_N)
        acc = _chunk_math(*cur, acc, WORDS, USE_ASM)
        cur = nxt
    total = tl.sum(acc, axis=1)

    if split == 0:  # the outlier block and the bias: first split only
        if HAS_OUT:
            offs_o = tl.arange(0, BLOCK_OW)
            part_o = tl.zeros((BLOCK_N, BLOCK_OW), tl.int32)
            for o0 in range(0, N_OUT_W, BLOCK_OW):
                mask_o = (o0 + offs_o) < N_OUT_W
                ao = tl.load(ao_ptr + o0 + offs_o, mask=mask_o, other=0)
                wo = tl.load(wo_ptr + offs_n[:, None] * stride_won + (o0 + offs_o)[None, :],
                             mask=mask_n[:, None] & mask_o[None, :], other=0)
                part_o = _dp4a(wo, ao[None, :], part_o, USE_ASM)
            swo = tl.load(wos_ptr + offs_n, mask=mask_n, other=0.0)
            total += tl.sum(part_o, axis=1).to(tl.float32) * tl.load(aos_ptr) * swo
        if HAS_BIAS:
            total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + split * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


# (BLOCK_N rows, CHUNK groups a step, warps). H200, cold weights (benchmarks/explore_decode_gemm.py
# --gemv, results/h200/explore_gemv_ahead_session15.log), the best split of each: the least total
# time over Llama-2-7B qkv / o / gate-up / down and Llama-3-8B gate-up / down of the 14 forms, 80.7 us
# against 100.5 for the swap kernel. 32 x 4 x 16 words on 4 warps is 16 words (64 bytes) a thread a
# step; its (32, 4) scale tile goes through shared memory (Triton keeps a load with as many elements
# as threads in its own layout) and it still wins.
GEMV_CONFIG = (16, 2, 1) if INTERPRET else (32, 4, 4)  # the interpreter: small tiles


def gemv_split_k(n: int, groups: int, sms: int, block_n: int | None = None) -> int:
    """Splits of the K groups: double while the row tiles give fewer than 2 programs a SM, keeping
    >= 4 groups a share. With the 32-row tiles that is the best split timed for each shape above
    but Llama-3-8B gate/up (1 split: 23.5 us, best 4: 22.7): qkv and gate/up 1, o and down 4."""
    tiles = triton.cdiv(n, block_n or GEMV_CONFIG[0])
    splits = 1
    while tiles * splits < 2 * sms and splits < 16 and groups >= 2 * splits * 4:
        splits *= 2
    return no_empty_split(groups, splits)


def launch_gemv(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                w_outlier_scale, bias, out, group_size, splits, config=None):
    """out: the (splits, 1, N) float32 workspace, or the (1, N) output when splits == 1. The format
    makes every operand whole int32 words (group sizes and outlier counts multiples of 16)."""
    n = w_packed.shape[0]
    n_out_w = a_outliers.shape[1] // 4
    block_n, chunk, warps = config or GEMV_CONFIG
    words = lambda t: t.view(torch.int32)  # noqa: E731  (4 packed bytes a word)
    grid = (triton.cdiv(n, block_n), splits)
    wrap_triton(_w4a4_gemv_kernel)[grid](
        words(a_packed), a_scale, words(a_outliers) if n_out_w else a_outliers, a_outlier_scale,
        words(w_packed), w_scale, words(w_outliers) if n_out_w else w_outliers, w_outlier_scale,
        bias if bias is not None else a_scale, out,
        n, a_scale.shape[1], n_out_w, splits,
        w_packed.stride(0) // 4, w_scale.stride(0), max(w_outliers.stride(0) // 4, 1),
        WORDS=group_size // 8,
        BLOCK_OW=max(4, min(32, triton.next_power_of_2(max(n_out_w, 1)))),
        HAS_OUT=n_out_w > 0, HAS_BIAS=bias is not None, USE_ASM=not INTERPRET,
        EVEN_N=n % block_n == 0, BLOCK_N=block_n, CHUNK=chunk,
        num_warps=warps, num_stages=1,
    )


# ---------------------------------------------------------------- the token quantized in the loop
# At M = 1 the activation quantizer is a kernel of its own that moves 8 KB in ~2.9 us of launch
# and dependent-load latency (H200 profile, 128 of them in a Llama-2-7B decode step). Here each
# program quantizes its share of the token itself, step by step, with the quantizer's own
# arithmetic (``quantize_activation``: the same bits): the permutation two steps ahead, the
# token's gathered values one step ahead, both issued before the step's math.


@triton.jit
def _perm_chunk(perm_ptr, groups, ok, K_NORMAL, WORDS: tl.constexpr):
    """Source channels of the step's groups as (CHUNK, 2, WORDS, 4): group, nibble (element j or
    j + group_size / 2 of byte j), word, byte; -1 where the reference pads (past K_NORMAL) or past
    the share."""
    half = tl.arange(0, 2)[None, :, None, None]
    word = tl.arange(0, WORDS)[None, None, :, None]
    byte = tl.arange(0, 4)[None, None, None, :]
    pos = groups[:, None, None, None] * (8 * WORDS) + half * (4 * WORDS) + word * 4 + byte
    return tl.load(perm_ptr + pos, mask=ok[:, None, None, None] & (pos < K_NORMAL), other=-1)


@triton.jit
def _gather_token(x_ptr, channels):
    return tl.load(x_ptr + tl.maximum(channels, 0), mask=channels >= 0, other=0.0).to(tl.float32)


@triton.jit
def _quantize_chunk(x, clip_ratio, PTX: tl.constexpr):
    """(CHUNK, 2, WORDS, 4) float32 -> packed words (CHUNK, WORDS) and scales (CHUNK,), as
    ``quantize_activation``'s kernel computes them."""
    bits = tl.max(tl.max(tl.max(_abs_bits(x), axis=3), axis=2), axis=1)
    scale = tl.math.div_rn(bits.to(tl.float32, bitcast=True) * clip_ratio, 7.0)  # NaN if any NaN
    q = _round_clamp(x * _safe_inverse(scale)[:, None, None, None], -8, 7, PTX)
    half = tl.arange(0, 2)[None, :, None, None]
    byte = tl.arange(0, 4)[None, None, None, :]
    # disjoint bit fields: their sum is their OR
    words = tl.sum(tl.sum((q & 0xF) << (half * 4 + byte * 8), axis=3), axis=1)
    return words, scale


@triton.jit
def _w4a4_gemv_quantize_kernel(
    x_ptr, perm_ptr,
    w_ptr, ws_ptr, wo_ptr, wos_ptr,  # w_ptr, wo_ptr: int32 views
    bias_ptr, out_ptr,
    N, G, K_NORMAL, N_OUT, SPLITS,
    stride_wn, stride_wsn, stride_won,
    clip_ratio,
    WORDS: tl.constexpr, BLOCK_OW: tl.constexpr,  # outlier words, all in one step
    HAS_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    EVEN_N: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    clip_ratio = tl.cast(clip_ratio, tl.float32)  # Inductor passes a Python float as fp64
    split, g0, n_g, offs_n, offs_c = _program_share(G, SPLITS, BLOCK_N, CHUNK)
    mask_n = offs_n < N
    w_ptrs, ws_ptrs = _weight_ptrs(w_ptr, ws_ptr, offs_n, g0, offs_c, stride_wn, stride_wsn, WORDS)
    acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    xv = _gather_token(x_ptr, _perm_chunk(perm_ptr, g0 + offs_c, offs_c < n_g, K_NORMAL, WORDS))
    perm_next = _perm_chunk(perm_ptr, g0 + CHUNK + offs_c, CHUNK + offs_c < n_g, K_NORMAL, WORDS)
    w, sw = _weight_chunk(w_ptrs, ws_ptrs, offs_c, n_g, mask_n, EVEN_N)
    a, sa = _quantize_chunk(xv, clip_ratio, USE_ASM)
    for c in range(CHUNK, n_g + CHUNK, CHUNK):
        w_next, sw_next = _weight_chunk(w_ptrs + c * WORDS, ws_ptrs + c, c + offs_c, n_g, mask_n, EVEN_N)
        xv = _gather_token(x_ptr, perm_next)
        perm_next = _perm_chunk(perm_ptr, g0 + c + CHUNK + offs_c, c + CHUNK + offs_c < n_g, K_NORMAL, WORDS)
        acc = _chunk_math(w, sw, a, sa, acc, WORDS, USE_ASM)
        a, sa = _quantize_chunk(xv, clip_ratio, USE_ASM)
        w, sw = w_next, sw_next
    total = tl.sum(acc, axis=1)

    if split == 0:  # the outlier block (INT8 per token, one step) and the bias: first split only
        if HAS_OUT:
            o = tl.arange(0, BLOCK_OW)[:, None] * 4 + tl.arange(0, 4)[None, :]  # (words, bytes)
            ok_o = o < N_OUT
            v = _gather_token(x_ptr, tl.load(perm_ptr + K_NORMAL + o, mask=ok_o, other=-1))
            bits = tl.max(tl.max(_abs_bits(v), axis=1), axis=0)
            scale_o = tl.math.div_rn(bits.to(tl.float32, bitcast=True), 127.0)
            q = _round_clamp(v * _safe_inverse(scale_o), -127, 127, USE_ASM)
            ao = tl.sum((q & 0xFF) << (tl.arange(0, 4)[None, :] * 8), axis=1)  # (BLOCK_OW,) words
            offs_o = tl.arange(0, BLOCK_OW)
            wo = tl.load(wo_ptr + offs_n[:, None] * stride_won + offs_o[None, :],
                         mask=mask_n[:, None] & (offs_o[None, :] * 4 < N_OUT), other=0)
            part_o = _dp4a(wo, ao[None, :], tl.zeros((BLOCK_N, BLOCK_OW), tl.int32), USE_ASM)
            swo = tl.load(wos_ptr + offs_n, mask=mask_n, other=0.0)
            total += tl.sum(part_o, axis=1).to(tl.float32) * scale_o * swo
        if HAS_BIAS:
            total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + split * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


MAX_FUSED_OUTLIERS = 256  # the outlier block is quantized in one step (its scale needs all of it)


def launch_gemv_quantize(x, perm, n_outliers, clip_ratio, w_packed, w_scale, w_outliers, w_outlier_scale, bias,
                         out, group_size, splits, config=None):
    """``launch_gemv`` with the token quantized inside: x (1, K) float, perm (K,) int32."""
    n, k = w_packed.shape[0], x.shape[1]
    block_n, chunk, warps = config or GEMV_CONFIG
    words = lambda t: t.view(torch.int32)  # noqa: E731
    grid = (triton.cdiv(n, block_n), splits)
    wrap_triton(_w4a4_gemv_quantize_kernel)[grid](
        x, perm, words(w_packed), w_scale, words(w_outliers) if n_outliers else w_outliers, w_outlier_scale,
        bias if bias is not None else w_scale, out,
        n, w_scale.shape[1], k - n_outliers, n_outliers, splits,
        w_packed.stride(0) // 4, w_scale.stride(0), max(w_outliers.stride(0) // 4, 1),
        clip_ratio,
        WORDS=group_size // 8, BLOCK_OW=max(4, triton.next_power_of_2(max(n_outliers // 4, 1))),
        HAS_OUT=n_outliers > 0, HAS_BIAS=bias is not None, USE_ASM=not INTERPRET,
        EVEN_N=n % block_n == 0, BLOCK_N=block_n, CHUNK=chunk,
        num_warps=warps, num_stages=1,
    )
