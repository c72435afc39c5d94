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
Also dropped (session 16, explore_one_token_session16.log): the token quantized inside this
kernel, each program quantizing its share step by step (one launch instead of the quantizer's
~2.9 us one): slower on all six linears at their default splits (Llama-2-7B gate/up 18.2 -> 30.1
us, qkv 13.0 -> 14.4, down 13.5 -> 14.9; Llama-3-8B gate/up 26.3 -> 30.7): the quantizer's
arithmetic in the weight stream's loop costs more issue slots than the launch it saves.
Also dropped (session 36, results/h200/session36_explore_pdl_prefetch_s36.log and
session36_generate_prefetch_ab_b1_s36.log): each program, once done with its own weights, asking
its share of the *next* linear's into L2 (``prefetch.global.L2``, with or without ``evict_last``,
its own loads ``evict_first`` or not; a post-grad pass linked each gemv launch to the next). In
explore_pdl's 32-layer quantize -> gemv chain with PDL: 1936 us a step without, 1938 with 8 MB of
the next weights, 2059 with 24, 2158 with 48 (which kernels lost the time was not measured); in
the Llama-2-7B batch-1 model (8 MB, qkv -> o -> gate/up -> down within each layer) 2.17 -> 2.78 ms
a token, though the pass's compiled same-bits GPU test also failed there (cause not known).
Also dropped (session 37, results/h200/session37_explore_gemv_stream_s37.log and
session37_generate_gemv_tma_ab_b1_s37.log): the weight words by TMA (a device-side tensor
descriptor, a (32, 64-word) box a step, 3-6 boxes in flight through shared memory by Triton's
pipeliner) instead of registers one step ahead. Cold weights, eager calls with their split sum,
Llama-2-7B gate/up 14.9 -> 16.6 us (3 boxes) / 19.9 (6), down 12.0 -> 12.5 / 13.4, o 7.35 -> 8.79
(64-row tiles); the batch-1 model 2.42 -> 2.78 ms a token; its bits also differed from this
kernel's on two of four GPU shapes (the same sums in the same order under the interpreter). A
load-only kernel with this tile (xor of the words, benchmarks/explore_gemv_stream.py) reads
gate/up at 3.45 TB/s (11.4 us against this kernel's 14.7), down at 3.0, o at 1.5 (this kernel:
1.74): the small linears pay the stream's ramp, not the math; a contiguous weight layout (each
step one block) gained 1-6%. 8 groups a step in this kernel
(32 x 8 x 4, 16 x 8 x 4; session37_explore_gemv_chunk8_s37.log) were slower on the four Llama-2
linears but down (8.78 against 8.93 us, within noise).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from atom_ao.ops import pdl as pdl_switch
from atom_ao.ops.pdl import release_next, wait_for_prior  # bare names: Inductor copies the jit helpers a kernel calls by name
from atom_ao.ops.gemm_tiles import SCALE_256, group_sum_x256_to_f32, no_empty_split, split_share

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
def _chunk_w(w_ptrs, ws_ptrs, slot, n_g, mask_n, EVEN_N: tl.constexpr, SCALE_COPIES: tl.constexpr):
    """One step's weight loads: words (BLOCK_N, CHUNK, WORDS) and scales (BLOCK_N, CHUNK); group
    slots past the share read nothing."""
    ok = slot < n_g  # (CHUNK,)
    ok_w = ok[None, :, None] if EVEN_N else ok[None, :, None] & mask_n[:, None, None]
    if SCALE_COPIES > 1:
        # each scale loaded SCALE_COPIES times along a third axis, one copy for each thread of the
        # group row: the load's layout follows the word tile's, and each thread scales the dot of
        # its own word slice (_chunk_math), with no shared memory or barrier (GEMV_SCALE_COPIES)
        ok_s = ok[None, :, None] if EVEN_N else ok[None, :, None] & mask_n[:, None, None]
        copies = tl.zeros((1, 1, SCALE_COPIES), tl.int32)
        sw = tl.load(ws_ptrs[:, :, None] + copies, mask=ok_s, other=0.0)
    else:
        ok_s = ok[None, :] if EVEN_N else ok[None, :] & mask_n[:, None]
        sw = tl.load(ws_ptrs, mask=ok_s, other=0.0)
    return tl.load(w_ptrs, mask=ok_w, other=0), sw


@triton.jit
def _prefetch_l2(ptrs):
    """``prefetch.global.L2`` of each address; returns zeros of the same shape. Marked pure (Inductor's
    write analysis refuses impure inline asm) and its result is used, so the compiler keeps it."""
    return tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _chunk_a(a_ptrs, as_ptrs, slot, n_g):
    """One step's token loads: words (CHUNK, WORDS) and scales (CHUNK,)."""
    ok = slot < n_g
    return tl.load(a_ptrs, mask=ok[:, None], other=0), tl.load(as_ptrs, mask=ok, other=0.0)


@triton.jit
def _chunk_math(w, sw, a, sa, acc, WORDS: tl.constexpr, USE_ASM: tl.constexpr, SCALE_COPIES: tl.constexpr):
    """acc (BLOCK_N, CHUNK) += each group's INT32 dot (exact in float32) x its token and row scales.
    With SCALE_COPIES: acc (BLOCK_N, CHUNK, SCALE_COPIES) += each of the group's SCALE_COPIES
    word-slices' dot x the scales (sw its copies), so no step sums across threads."""
    a_lo, a_hi = _nibbles(a)
    w_lo, w_hi = _nibbles(w)
    part = _dp4a(w_lo, a_lo[None, :, :], tl.zeros(w.shape, tl.int32), USE_ASM)
    part = _dp4a(w_hi, a_hi[None, :, :], part, USE_ASM)
    if SCALE_COPIES > 1:
        slices = tl.reshape(part, (part.shape[0], part.shape[1], SCALE_COPIES, WORDS // SCALE_COPIES))
        dot3 = group_sum_x256_to_f32(tl.sum(slices, axis=3), WORDS * 4)  # 256 x each slice's dot
        acc = acc + dot3 * (sa * SCALE_256)[None, :, None] * sw
    else:
        dot = group_sum_x256_to_f32(tl.sum(part, axis=2), WORDS * 4)  # 256 x the group's dot
        acc = acc + dot * (sa * SCALE_256)[None, :] * sw
    return acc


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
    PDL: tl.constexpr,  # launched with programmatic dependent launch (launch_gemv's pdl)
    L2_AHEAD: tl.constexpr,  # steps of weights prefetched into L2 before the PDL wait (GEMV_L2_AHEAD)
    RELEASE_LATE: tl.constexpr,  # with PDL: let the next kernel launch after the K loop, not at the wait
    SCALE_COPIES: tl.constexpr,  # copies of each weight scale loaded (GEMV_SCALE_COPIES; 1: one load)
):
    # The row offsets (and so the output store's address) are computed here, not returned by a
    # helper that also takes the weight pointers: Inductor's mutation analysis of the TTIR derives
    # every result of a called function from all its arguments, and would take the store for one
    # into the weights, which compiled graphs then clone and copy back every call (session 16;
    # tests/ops/test_kernel_writes.py).
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    g0, n_g = split_share(G, SPLITS, split)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_c = tl.arange(0, CHUNK)
    offs_w = tl.arange(0, WORDS)
    w_ptrs = (w_ptr + offs_n[:, None, None] * stride_wn + (g0 + offs_c)[None, :, None] * WORDS
              + offs_w[None, None, :])
    ws_ptrs = ws_ptr + offs_n[:, None] * stride_wsn + (g0 + offs_c)[None, :]
    a_ptrs = a_ptr + (g0 + offs_c)[:, None] * WORDS + offs_w[None, :]
    as_ptrs = as_ptr + g0 + offs_c
    if SCALE_COPIES > 1:  # per group slot and word slice, summed at the end
        acc = tl.zeros((BLOCK_N, CHUNK, SCALE_COPIES), dtype=tl.float32)
    else:  # per group slot, summed at the end
        acc = tl.zeros((BLOCK_N, CHUNK), dtype=tl.float32)
    w, sw = _chunk_w(w_ptrs, ws_ptrs, offs_c, n_g, mask_n, EVEN_N, SCALE_COPIES)
    if L2_AHEAD > 0:
        # and the next L2_AHEAD steps' weight words into L2, one address a 64-byte group row
        rows = tl.where(mask_n, offs_n, 0)
        zero = tl.zeros((BLOCK_N, CHUNK), tl.int32)
        for j in tl.static_range(1, L2_AHEAD + 1):
            slot = tl.maximum(tl.minimum(j * CHUNK + offs_c, n_g - 1), 0)
            zero += _prefetch_l2(w_ptr + rows[:, None] * stride_wn + (g0 + slot)[None, :] * WORDS)
        w_ptrs += zero[:, :, None]
    # launched early (programmatic dependent launch): the first weights, which no kernel writes,
    # are on their way before waiting for the kernel that wrote the token
    wait_for_prior(PDL)
    if not RELEASE_LATE:
        release_next(PDL)
    a, sa = _chunk_a(a_ptrs, as_ptrs, offs_c, n_g)
    for c in range(CHUNK, n_g + CHUNK, CHUNK):
        nw, nsw = _chunk_w(w_ptrs + c * WORDS, ws_ptrs + c, c + offs_c, n_g, mask_n, EVEN_N, SCALE_COPIES)
        na, nsa = _chunk_a(a_ptrs + c * WORDS, as_ptrs + c, c + offs_c, n_g)
        acc = _chunk_math(w, sw, a, sa, acc, WORDS, USE_ASM, SCALE_COPIES)
        w, sw, a, sa = nw, nsw, na, nsa
    if RELEASE_LATE:
        release_next(PDL)
    if SCALE_COPIES > 1:
        total = tl.sum(tl.sum(acc, axis=2), axis=1)
    else:
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
# With PDL: steps of each program's weights prefetched into L2 while it waits for the token
# (inline PTX: never under the interpreter). Off: 2 steps cost 2.1 us a gemv in the H200 chain
# (session 33, benchmarks/explore_pdl.py); ATOM_AO_GEMV_L2_AHEAD sets it for a whole run.
GEMV_L2_AHEAD = int(os.environ.get("ATOM_AO_GEMV_L2_AHEAD", "0"))
# With PDL: when the gemv lets the next kernel launch. In a gemv -> gemv chain on the H200 (session
# 33, explore_pdl "gemv alone") "early" (at its wait) was 1.3 us a gemv slower than no PDL (the next
# kernel's programs sit on SM slots while the gemv's own still run), "late" (after the K loop) 0.6 faster.
GEMV_PDL_RELEASE = os.environ.get("ATOM_AO_GEMV_PDL_RELEASE", "late")
if GEMV_PDL_RELEASE not in ("early", "late"):
    raise ValueError(f"ATOM_AO_GEMV_PDL_RELEASE must be 'early' or 'late', got {GEMV_PDL_RELEASE!r}")
# Load each weight scale once per thread sharing its group row (WORDS / 4 of them in the 32 x 4 x 16
# tile) and let each thread scale the dot of its own 4-word slice of the group, summing the slices
# once after the K loop. With one load a scale, Triton sums each group's dot across those threads
# (shuffles) and moves dots x token scales through shared memory into the scales' layout, between
# two barriers a step that hold the program's warps in lockstep. sm_90, `scripts/compile_sm90.py
# --loop-stats --only gemv`: a step of 170 SASS instructions with 2 BAR, 8 SHFL, 4 LDS, 1 STS; with
# the copies 163, no barrier or shared memory, 4 SHFL (3 more scale loads). The float sums differ
# in rounding (four products a group instead of one). Timed on the H200 (session 35, cold weights,
# results/h200/session35_explore_gemv_tiles_s34.log): within noise of one load on five Llama
# linears, and the Llama-2-7B batch-1 model 2.56 -> 2.65 ms a token; so off
# (ATOM_AO_GEMV_SCALE_COPIES=1 turns it on).
GEMV_SCALE_COPIES = os.environ.get("ATOM_AO_GEMV_SCALE_COPIES") == "1"


def scale_copies(group_size: int) -> int:
    """SCALE_COPIES for a group size: its threads a group row (WORDS / 4, a power of two) with
    GEMV_SCALE_COPIES on, else 1."""
    words = group_size // 8
    return words // 4 if GEMV_SCALE_COPIES and words >= 8 and words & (words - 1) == 0 else 1


# Split the K groups until the programs reach 3.5 a SM (GEMV_MORE_SPLITS, the default), or 2 (before
# session 35). H200, cold weights, 32-row tiles, us at splits 1 / 2 / 4 / 8 (session 35,
# results/h200/session35_explore_gemv_splits_s35.log): Llama-2-7B qkv 10.9 / 8.91 / 9.66 / 10.6
# (384 tiles: 2 splits now, 1 before), Llama-3-8B qkv 8.99 / 6.5 / 5.6 / 5.85 (192 tiles: 4, 2
# before); o, down and Llama-2 gate/up keep their best (4, 4, 1); Llama-3 gate/up (896 tiles)
# keeps 1 split, 22.4 against 19.9 at 2 or 4.
GEMV_MORE_SPLITS = os.environ.get("ATOM_AO_GEMV_MORE_SPLITS", "1") == "1"


def gemv_split_k(n: int, groups: int, sms: int, block_n: int | None = None) -> int:
    """Splits of the K groups: double while the row tiles give fewer than 3.5 programs a SM (2
    without GEMV_MORE_SPLITS), keeping >= 4 groups a share: qkv 2 (Llama-2-7B) or 4 (Llama-3-8B),
    gate/up 1, o and down 4."""
    tiles = triton.cdiv(n, block_n or GEMV_CONFIG[0])
    aim = 3.5 * sms if GEMV_MORE_SPLITS else 2 * sms
    splits = 1
    while tiles * splits < aim and splits < 16 and groups >= 2 * splits * 4:
        splits *= 2
    return no_empty_split(groups, splits)


def launch_gemv(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                w_outlier_scale, bias, out, group_size, splits, config=None, pdl=None):
    """out: the (splits, 1, N) float32 workspace, or the (1, N) output when splits == 1. The format
    makes every operand whole int32 words (group sizes and outlier counts multiples of 16).
    ``pdl``: launch with programmatic dependent launch (sm90+; None: ``atom_ao.ops.pdl``'s
    switch), so the kernel starts reading its weights while the kernel before it finishes."""
    n = w_packed.shape[0]
    n_out_w = a_outliers.shape[1] // 4
    block_n, chunk, warps = config or GEMV_CONFIG
    opts = pdl_switch.launch_options(out, pdl, one_token=True)  # (the gemv is M = 1 only)
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
        L2_AHEAD=GEMV_L2_AHEAD if opts["PDL"] and not INTERPRET else 0,
        RELEASE_LATE=opts["PDL"] and GEMV_PDL_RELEASE == "late",
        SCALE_COPIES=scale_copies(group_size),
        num_warps=warps, num_stages=1, **opts,
    )
