"""``atom_ao::kv_decode_attention``: one query token per sequence against the INT4 (paged) cache.

Flash-decoding. Grid (batch, kv_head, split): each program streams one slice of one
sequence's cache for one KV head and serves *all* query heads of that KV group at once (GQA:
the K/V bytes are read once, the group's G query rows are the M side of the tensor-core dots,
padded to 16). Scores come straight from the packed codes (``kv_tiles``: two half-dots, one
scale multiply, one zero correction), the softmax is streamed in base 2, and the program writes
its un-normalized output with its running max and sum. A second small kernel combines the
splits of each (sequence, head) by log-sum-exp. With one split the first kernel normalizes and
writes the output itself (large batches: no second launch, no partials).

At head_dim 128 with 16-bit queries and keys cached after RoPE, GQA and MHA alike go to
``kv_decode_gqa``'s one-warp form (nibble planes of the cache words as the A operands of
S^T = K Q^T and O^T = V^T P^T, the group's heads on N) wherever its split rule finds a quarter
wave of programs; below that MHA takes ``kv_decode_mha`` (warp-private token streams on the CUDA
cores) and GQA this kernel's 4-warp configs. Same grid, partials and reduce kernel throughout.

Sequence lengths vary per sequence (``seq_lens``); each sequence divides its own length among
the splits, so the split count is chosen on the host from an upper bound alone (``max_seq_len``,
no device sync: CUDA-graph and torch.compile friendly) and splits past a short sequence's end
return at once. ``kv_start`` (left padding) masks the positions before it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from atom_ao.kv.format import check_cache, check_head_dim
from atom_ao.kv.reference import decode_attention_ref
from atom_ao.kv.rope import check_rope_args
from atom_ao.ops import pdl as pdl_switch
from atom_ao.ops.pdl import wait_then_release  # a bare name: Inductor copies the jit helpers a kernel calls by name
from atom_ao.ops.kv_decode_gqa import decode_gqa_kernel, gqa_configs
from atom_ao.ops.kv_decode_mha import ROWS as MHA_ROWS, decode_mha_kernel, mha_configs
from atom_ao.ops.kv_tiles import (
    F32_MAGIC, dot_dtype, dot_precision, fma_pv, fma_scores, half_dots, int4_pv, int4_scores, load_codes,
    load_raw, magic_bits, online_softmax, operand_dtype, paged_rows, rope_keys, split_tiles,
    sylvester_signs, unpack_codes,
)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
# Fewer tokens per split: the partials cost more than the extra programs give. Small batches have
# little other parallel work: H200 (``bench_attention.py --explore-splits``), batch 1, context
# 1024: 256 -> 64 took Llama-2-7B heads 17.2 -> 9.8 us, Llama-3-8B 11.3 -> 6.9; Llama-3 at 8192
# 19.4 -> 14.6; Llama-2 batch 4 at 1024 22.6 -> 17.7 (32 was no faster anywhere).
MIN_SPLIT_TOKENS = 64
# splits a pass of the rotating combine (``reduce_rotate_tiling``): its dots' M side is at most 64
REDUCE_ROTATE_CHUNK = 64
# The one-warp GQA rule's shortest split: its waves were timed with 256 (64 not yet)
ONE_WARP_MIN_SPLIT_TOKENS = 256
# Up to this many query heads per KV head the generic kernel's scores and P.V run on the CUDA
# cores (``kv_tiles.fma_scores``): a tensor-core tile would be mostly padding. (MHA, G = 1, uses
# ``kv_decode_mha`` unless keys are cached before RoPE: 2.3x this path on the H200.)
FMA_MAX_G = 2
MHA_KERNEL = True  # one query head per KV head: ``kv_decode_mha`` (False: the generic kernel's CUDA-core path)
# ``kv_decode_mha`` with the codes' 2^23 offsets removed once per row instead of per code (its
# FOLD; False: the subtraction per code). H200, Llama-2-7B heads: 2-4% faster (batch 64, context
# 8192: 1132 -> 1107 us; ``bench_attention.py --explore``).
MHA_FOLD = True
# grouped queries (more than FMA_MAX_G a KV head), head_dim 128: ``kv_decode_gqa``'s 4-warp form
# (nibble planes, wgmma) instead of the generic kernel's tensor-core path. Off: slower when timed
# (H200, session 9: 634 against 540 us at batch 64, context 8192); its one-warp form is ONE_WARP_PLANES.
GQA_KERNEL = False
# The generic kernel's tensor-core path (grouped queries, keys cached after RoPE) with ONE warp a
# program: the 16-row dots (the group's query heads, padded) over 32-token steps stay inside the
# warp, so a step's softmax max and sum need no shared memory or barrier (with 4 warps the dots'
# columns spread over the warps and every step's max and sum crossed them). H200, Llama-3-8B
# heads (``bench_attention.py --explore-warps``): batch 64, context 1024 81.2 -> 63.6 us, 8192
# 544 -> 422 us. It needs a full wave of programs (``one_warp_splits``); with fewer (small batch
# and short context) the 4-warp configs keep more loads in flight per program and stay.
ONE_WARP_GQA = True
# one-warp programs resident a SM, by head_dim / 2: the registers (254 a thread at head_dim 128,
# 164 at 64; sm_90, Triton 3.6-3.9) leave room for 8 and 12. The H200 timings follow these
# waves: at batch 64, context 8192, 2 splits (1024 programs, one wave) 416 us, 3 splits 540 us.
ONE_WARP_RESIDENT = {64: 8, 32: 12}
# The one-warp GQA programs at head_dim 128 (bf16 / fp16 queries) on ``kv_decode_gqa``'s WARP form
# instead of the generic kernel: the keys' nibble planes as the A operand of S^T = K Q^T and the
# values' as the A operand of O^T = V^T P^T, so the group's heads are the dots' N side (padded to 8,
# not 16), unpacked two words at a time by inline asm; the scales loaded a step ahead, the word
# tiles a whole step ahead (5 stages). Offline (sm_90a): 29 instead of 41 instructions a token, 168
# instead of 254 registers. H200, Llama-3-8B heads (``bench_attention.py --explore-planes``): batch
# 64, context 8192 416 -> 218 us (49 -> 94% of copy), 1024 63.2 -> 34.7, batch 16 / 8192 116 -> 61,
# batch 256 / 2048 412 -> 216. Nsight Compute (``scripts/ncu_kernels.py``): the generic kernel's
# warps waited on global loads (long scoreboard 1.93 cycles an instruction: its tiles were issued
# after the step's math), this one's 0.08. Session 29, V's words loaded transposed: the H200's Triton
# 3.6 builds it in 128 registers (16 a SM fit); Nsight Compute, batch 64 / 8192: MHA 3.52 TB/s of
# DRAM (73%), 0.65 instructions issued a scheduler-cycle, the stalls mostly "not selected" and
# "math pipe throttle" (the integer pipe's unpacking); GQA (2 splits) 3.09 TB/s at 11% achieved
# occupancy. Forcing 12 or 16 programs a SM by more splits (``bench_attention.py --explore-fill``)
# moved every case timed by less than 3% except where it lost (``results/h200/session29_*``).
ONE_WARP_PLANES = True
# the planes kernel's one-warp form on fp16 dots with each byte's high nibble taken in place (HI16:
# (x & 0x00F000F0) | 0x6400 is 1024 + 16 c in fp16, so a 16-bit half's four nibbles need one shift
# instead of three; the queries of those planes times 1/16, their sums / 16 at the end), also for
# bf16 queries (bf16 values between ~1e-3 and 65504 convert exactly, smaller ones become fp16
# subnormals; the largest query entries measured, SmolLM2-135M 21.7 and Qwen2.5-0.5B 82.5, stay far
# below the top: README, "INT4 KV cache"). Offline (sm_90a, Triton 3.9): see
# ``kv_decode_gqa._word_pairs_hi16_asm``. Nsight Compute had found the integer pipe throttling the
# kernel; H200, session 30 (``bench_attention.py --flag-ab ...:PLANES_HI16``): Llama-2-7B heads
# batch 64 / 1056 88.1 -> 78.8 us, batch 1 / 32768 50.1 -> 45.6; Llama-3-8B batch 64 / 8192
# 186.2 -> 170.6, batch 1 / 32768 19.6 -> 18.2.
PLANES_HI16 = True
# its split rule (``one_warp_splits``): programs a SM (it fits 12), shortest split, and the least
# part of a wave worth it. H200, Llama-3-8B heads (``--explore-planes``, ``--explore-planes-small``):
# 8 a SM gave 2 splits at batch 64, context 1024 (34.7 us) where 12 gave 3 (39.2) and 16 two waves
# (76.8); at 8192 and batch 256 / 2048 all within 2%. Small batches fill a wave with shorter splits:
# batch 1, context 32768 128 splits 22.3 us against 40.6 on the 4-warp path, batch 4 / 4096 32
# splits 14.9 against 23.1, batch 16 / 1024 8 splits 15.3 against 27.1. Below a quarter of a wave
# (PLANES_LEAST_WAVE) the 4-warp path (GQA: batch 1 / 1024 6.9 against 7.4) or the MHA kernel
# stays; at batch 1 / 4096 (GQA, half a wave) the planes took 10.1 against 10.8, and MHA at batch 1
# / 1024 (16 splits) 8.09 against 9.75 for ``kv_decode_mha``. Fewer, longer splits than the rule's
# (session 38, ``--explore-long-splits``, results/h200/session38_attention_long_splits_s38.log):
# half as many moved batch-1 cases by -5% to +16% (Llama-3-8B batch 1 / 32768 21.1 -> 24.5 us);
# from 256 tokens a program on, each further 32-token step adds ~0.7 us (Llama-3-8B batch 1 /
# 8192: 32 splits 11.1, 16 splits 17.1).
ONE_WARP_PLANES_RESIDENT = 8
PLANES_MIN_SPLIT_TOKENS = 64
PLANES_LEAST_WAVE = 0.25
# MHA (one query head per KV head, head_dim 128) on the same one-warp planes kernel (its head
# padded to 8 on the dots' N side: the tensor cores have room) instead of ``kv_decode_mha``, where
# the rule gives it programs. H200, Llama-2-7B heads (``bench_attention.py --explore-mha-planes``):
# batch 64, context 8192 1103 -> 853 us (75 -> 97% of copy), 1024 148 -> 110, batch 16 / 8192
# 288 -> 221, batch 256 / 2048 1058 -> 848, batch 1 / 32768 105 -> 61.6, batch 4 / 4096 49.9 -> 33.8,
# batch 1 / 1024 9.75 -> 8.09 (16 splits).
MHA_PLANES = True
INTERPRET_PREFETCH = False  # under the interpreter (tests flip it): the kernels' prefetching variant
UNPACK_MAGIC = True  # codes -> floats by the mantissa trick (``kv_tiles.load_codes``); False: casts


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 16, "PREFETCH": False}, num_warps=4, num_stages=1)]
    # PREFETCH (``_load_tile`` one tile ahead in registers) only with num_stages=1: the
    # pipeliner's own prefetch (num_stages > 1) covers the loads that feed a dot
    return [
        triton.Config({"BLOCK_N": bn, "PREFETCH": pf}, num_warps=w, num_stages=st)
        for bn, w, st, pf in ((32, 4, 3, False), (64, 4, 3, False), (64, 8, 3, False), (128, 8, 3, False),
                              (128, 8, 4, False), (32, 4, 1, True), (64, 8, 1, True))
    ]


def _as_words(cache: torch.Tensor) -> bool:
    """Whether a (pages, heads, page_size, D/2) uint8 cache can be read as int32 words (the MHA
    kernel's view): 4-byte aligned start and strides (a cache sliced oddly falls back to the
    generic kernel)."""
    return cache.storage_offset() % 4 == 0 and all(s % 4 == 0 for s in cache.stride()[:-1])


def _word_view_args(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml, qk_scale,
                    splits) -> tuple:
    """The positional arguments of the kernels that read the caches as int32 words (``kv_decode_mha``,
    ``kv_decode_gqa``: the same signature up to the constexprs): cache strides in words."""
    kw, vw = k_cache.view(torch.int32), v_cache.view(torch.int32)
    return (q, kw, vw, k_meta, v_meta, block_table, seq_lens, kv_start if kv_start is not None else seq_lens,
            out, part, ml, qk_scale, splits, q.shape[1],
            q.stride(0), q.stride(1), kw.stride(0), kw.stride(1), kw.stride(2),
            k_meta.stride(0), k_meta.stride(1), k_meta.stride(2), block_table.stride(0), out.stride(0), out.stride(1))


def _launch_mha(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml, qk_scale,
                splits, one):
    """One query head per KV head: ``kv_decode_mha.decode_mha_kernel``, on the caches viewed as
    int32 words (a row of D/2 bytes is D/8 words; page, head and row strides in words)."""
    b, h, d = q.shape
    args = _word_view_args(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml,
                           qk_scale, splits)
    meta = dict(HALF=d // 2, PAGE=k_cache.shape[2], HAS_START=kv_start is not None, ONE_SPLIT=one, ASM=not _INTERPRET,
                ROWS=MHA_ROWS, FOLD=MHA_FOLD)  # every constexpr passed: Inductor's wrap_triton fills in no defaults
    if _INTERPRET:
        wrap_triton(decode_mha_kernel)[(b, h, splits)](*args, **meta, WARPS=2, PREFETCH=INTERPRET_PREFETCH,
                                                        num_warps=2)
    else:
        wrap_triton(_decode_mha_tuned)[(b, h, splits)](*args, **meta)


def _launch_gqa(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml, qk_scale,
                splits, one, warp=False):
    """Grouped queries, head_dim 128: ``kv_decode_gqa.decode_gqa_kernel`` on the caches viewed
    as int32 words (as ``_launch_mha``); ``warp``: its one-warp form (WARP)."""
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    g = h // hkv
    args = _word_view_args(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml,
                           qk_scale, splits)
    magic = magic_bits(q.dtype, _INTERPRET) & 0xFFFF  # the 16-bit pattern only (no pairs flag here)
    dot = dot_dtype(q.dtype, _INTERPRET)
    hi16 = warp and PLANES_HI16 and magic in (0x4300, 0x6400)
    if hi16:  # fp16 dots (the high nibbles in place need fp16's mantissa), bf16 queries too
        dot, magic = tl.float16, 0x6400
    # the heads are the dots' N side with WARP (mma.sync pads N to 8), M with 4 warps (16 rows)
    meta = dict(G=g, BLOCK_G=max(8 if warp else 16, triton.next_power_of_2(g)), HALF=d // 2, PAGE=k_cache.shape[2],
                HAS_START=kv_start is not None, ONE_SPLIT=one, DOT=dot, MAGIC=magic,
                OFFSET={0x4300: 128.0, 0x6400: 1024.0}.get(magic, 0.0), WARP=warp,
                ASM=warp and not _INTERPRET, HI16=hi16, **pdl_switch.launch_options(q, one_token=b == 1))  # every constexpr passed
    if _INTERPRET:
        wrap_triton(decode_gqa_kernel)[(b, hkv, splits)](*args, **meta, BLOCK_N=16, num_warps=1 if warp else 4)
    else:
        wrap_triton(_decode_gqa_warp_tuned if warp else _decode_gqa_tuned)[(b, hkv, splits)](*args, **meta)


def _planes_fit(q, k_cache, v_cache, k_rope) -> bool:
    """Whether ``kv_decode_gqa`` takes these inputs: keys cached after RoPE, head_dim 128 (16 words
    a row: a 16-deep dot a plane), 16-bit queries, word-aligned caches."""
    return (k_rope is None and q.shape[2] == 128 and q.dtype != torch.float32
            and _as_words(k_cache) and _as_words(v_cache))


def _gqa_kernel_fits(q, k_cache, v_cache, k_rope) -> bool:
    """The 4-warp planes kernel (GQA_KERNEL): grouped queries (more than FMA_MAX_G a KV head)
    that ``_planes_fit``."""
    return GQA_KERNEL and q.shape[1] // k_cache.shape[1] > FMA_MAX_G and _planes_fit(q, k_cache, v_cache, k_rope)


@triton.jit
def _load_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_row, i, tile_hi, seq_len,
               s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, HALF: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Raw K and V bytes, scales and zeros of tile i of this split (``kv_tiles.load_raw``); a tile
    past tile_hi reads nothing (its block-table lookup goes to tile 0, which every table has)."""
    inside = i < tile_hi
    i = tl.where(inside, i, 0)
    n0 = i * BLOCK_N
    ok = n0 + tl.arange(0, BLOCK_N) < tl.where(inside, seq_len, 0)
    row_c, row_m = paged_rows(bt_row, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE, BLOCK_N)
    kb, ks, kz = load_raw(kc_ptr, km_ptr, row_c, row_m, ok, s_mw, HALF)
    vb, vs, vz = load_raw(vc_ptr, vm_ptr, row_c, row_m, ok, s_mw, HALF)
    return kb, ks, kz, vb, vs, vz


@triton.jit
def _decode_split_kernel(
    q_ptr, kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_ptr, len_ptr, start_ptr,
    out_ptr, part_ptr, ml_ptr, rope_ptr, kb_ptr,
    qk_scale, num_splits, H, rope_sin_off,
    s_qb, s_qh,
    s_cp, s_ch, s_ct, s_mp, s_mh, s_mw,  # K and V share cache strides, and meta strides
    s_btb,
    s_ob, s_oh,  # final output (one split); partials are contiguous (B, H, splits, D) and (.., 2)
    G: tl.constexpr, BLOCK_G: tl.constexpr, HALF: tl.constexpr, PAGE: tl.constexpr, HAS_START: tl.constexpr,
    ONE_SPLIT: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr, PREC: tl.constexpr, FMA: tl.constexpr,
    ROPE: tl.constexpr, HAS_KBIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (atom_ao.ops.pdl): all it reads is written before
):
    wait_then_release(PDL)
    b = tl.program_id(0)
    hk = tl.program_id(1)
    sp = tl.program_id(2)
    # Inductor types a Python float argument fp64 (eager Triton: fp32); fp64 would leak into
    # the math (and break the dots' accumulator type)
    qk_scale = tl.cast(qk_scale, tl.float32)
    seq_len, start, tile_lo, tile_hi = split_tiles(len_ptr, start_ptr, b, sp, num_splits, HAS_START, BLOCK_N)

    g = tl.arange(0, BLOCK_G)
    g_ok = g < G
    heads = hk * G + g
    d = tl.arange(0, HALF)
    q_rows = q_ptr + b.to(tl.int64) * s_qb + heads[:, None] * s_qh + d[None, :]
    q_lo = tl.load(q_rows, mask=g_ok[:, None], other=0.0).to(DOT)
    q_hi = tl.load(q_rows + HALF, mask=g_ok[:, None], other=0.0).to(DOT)
    q_sum = tl.sum(q_lo.to(tl.float32), axis=1) + tl.sum(q_hi.to(tl.float32), axis=1)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc_lo = tl.zeros([BLOCK_G, HALF], tl.float32)
    acc_hi = tl.zeros([BLOCK_G, HALF], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * s_btb
    if PREFETCH:  # the first tile's bytes; each step then loads the next tile before using these
        kb, ks, kz, vb, vs, vz = _load_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_row, tile_lo, tile_hi, seq_len,
                                            s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, HALF, PAGE, BLOCK_N)
    for i in range(tile_lo, tile_hi):
        n0 = i * BLOCK_N  # a multiple of BLOCK_N the compiler can see
        t = n0 + tl.arange(0, BLOCK_N)
        ok = t < seq_len
        if PREFETCH:
            # issued now, waited for at the next step: the loads of one tile overlap the math
            # of the previous one (Triton pipelines only loads that feed a dot)
            kb_n, ks_n, kz_n, vb_n, vs_n, vz_n = _load_tile(
                kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_row, i + 1, tile_hi, seq_len,
                s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, HALF, PAGE, BLOCK_N)
            k_lo, k_hi = unpack_codes(kb, DOT, MAGIC)
            v_lo, v_hi = unpack_codes(vb, DOT, MAGIC)
        else:  # not _load_tile(i): its guard for the step past the end costs ~6% more instructions here
            row_c, row_m = paged_rows(bt_row, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE, BLOCK_N)
            k_lo, k_hi, ks, kz = load_codes(kc_ptr, km_ptr, row_c, row_m, ok, s_mw, HALF, DOT, MAGIC)
            v_lo, v_hi, vs, vz = load_codes(vc_ptr, vm_ptr, row_c, row_m, ok, s_mw, HALF, DOT, MAGIC)
        if ROPE:  # keys cached before RoPE: dequantize, add the bias, rotate, then plain dots
            k_lo, k_hi = rope_keys(k_lo, k_hi, ks, kz, t, ok, rope_ptr, rope_sin_off, kb_ptr + hk * (2 * HALF),
                                   HAS_KBIAS, HALF, DOT)
            if FMA:
                s = tl.sum(q_lo[:, None, :] * k_lo[None, :, :] + q_hi[:, None, :] * k_hi[None, :, :], axis=2)
            else:
                s = half_dots(q_lo, q_hi, k_lo, k_hi, PREC)
            s = s * qk_scale
        elif FMA:
            s = fma_scores(q_lo, q_hi, q_sum, k_lo, k_hi, ks, kz) * qk_scale
        else:
            s = int4_scores(q_lo, q_hi, q_sum, k_lo, k_hi, ks, kz, PREC) * qk_scale
        if HAS_START:
            ok = ok & (t >= start)
        s = tl.where(ok[None, :], s, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        if FMA:
            acc_lo, acc_hi = fma_pv(p, acc_lo * alpha[:, None], acc_hi * alpha[:, None], v_lo, v_hi, vs, vz)
        else:
            acc_lo, acc_hi = int4_pv(p, acc_lo * alpha[:, None], acc_hi * alpha[:, None], v_lo, v_hi, vs, vz, PREC)
        if PREFETCH:
            kb, ks, kz, vb, vs, vz = kb_n, ks_n, kz_n, vb_n, vs_n, vz_n

    if ONE_SPLIT:
        inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)  # no key at all (all padding): 0
        o_rows = out_ptr + b.to(tl.int64) * s_ob + heads[:, None] * s_oh + d[None, :]
        tl.store(o_rows, (acc_lo * inv[:, None]).to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
        tl.store(o_rows + HALF, (acc_hi * inv[:, None]).to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        row = (b.to(tl.int64) * H + heads) * num_splits + sp  # (BLOCK_G,) rows of the partials
        tl.store(part_ptr + row[:, None] * (2 * HALF) + d[None, :], acc_lo, mask=g_ok[:, None])
        tl.store(part_ptr + row[:, None] * (2 * HALF) + HALF + d[None, :], acc_hi, mask=g_ok[:, None])
        tl.store(ml_ptr + row * 2, m_i, mask=g_ok)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=g_ok)


def _one_warp_configs():
    # 32-token steps, 3 stages: the fastest timed (H200, Llama-3-8B heads); 16-token steps were up to
    # 7% slower, 64 (2 stages: 3 spill) up to 20%
    return [triton.Config({"BLOCK_N": 32, "PREFETCH": False}, num_warps=1, num_stages=3)]


_decode_one_warp_tuned = None if _INTERPRET else triton.autotune(
    configs=_one_warp_configs(), key=["G", "HALF", "ONE_SPLIT", "num_splits"])(_decode_split_kernel)
_decode_gqa_tuned = None if _INTERPRET else triton.autotune(
    configs=gqa_configs(), key=["G", "HALF", "ONE_SPLIT", "HAS_START", "num_splits"])(decode_gqa_kernel)


def gqa_warp_configs():
    # 5 stages: the word tiles' loads then run a whole step ahead (Triton's pipeliner gives the
    # block-table lookup its own stage: with 3 stages the tiles were issued after the step's math
    # and waited for at the top of the next step)
    return [triton.Config({"BLOCK_N": 32}, num_warps=1, num_stages=5)]


_decode_gqa_warp_tuned = None if _INTERPRET else triton.autotune(
    configs=gqa_warp_configs(), key=["G", "HALF", "ONE_SPLIT", "HAS_START", "num_splits"])(decode_gqa_kernel)
_decode_mha_tuned = None if _INTERPRET else triton.autotune(
    configs=mha_configs(), key=["HALF", "ONE_SPLIT", "HAS_START", "FOLD", "num_splits"])(decode_mha_kernel)
_decode_split_tuned = triton.autotune(configs=_configs(), key=["G", "HALF", "ONE_SPLIT", "FMA", "ROPE", "num_splits"])(
    _decode_split_kernel
) if not _INTERPRET else None


@triton.jit
def _decode_reduce_kernel(part_ptr, ml_ptr, out_ptr, H, num_splits, s_ob, s_oh,
                          D: tl.constexpr, SPLITS_P: tl.constexpr, PDL: tl.constexpr):
    """Combine the splits of one (sequence, head): out = sum_s w_s acc_s / sum_s w_s l_s with
    w_s = 2^(m_s - max m); empty splits (m = -inf, l = 0) weigh 0. PDL: atom_ao.ops.pdl."""
    wait_then_release(PDL)
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    s = tl.arange(0, SPLITS_P)
    s_ok = s < num_splits
    row = pid.to(tl.int64) * num_splits + s  # partials are contiguous (B, H, splits, ...)
    m = tl.load(ml_ptr + row * 2, mask=s_ok, other=float("-inf"))
    l_s = tl.load(ml_ptr + row * 2 + 1, mask=s_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)
    denom = tl.sum(w * l_s, axis=0)
    d = tl.arange(0, D)
    acc = tl.load(part_ptr + row[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], axis=0)
    o = tl.where(denom > 0, o / tl.where(denom > 0, denom, 1.0), 0.0)  # nothing attended: 0
    tl.store(out_ptr + b.to(tl.int64) * s_ob + h * s_oh + d, o.to(out_ptr.dtype.element_ty))


@triton.jit
def _decode_reduce_rotate_kernel(part_ptr, ml_ptr, out_ptr, R, H, num_splits, s_ob, s_oh,
                                 HALF: tl.constexpr, ROWS: tl.constexpr, SPLITS_P: tl.constexpr,
                                 CHUNK: tl.constexpr, DOT: tl.constexpr, SPLIT_HI_LO: tl.constexpr):
    """The combine of ``_decode_reduce_kernel`` for ROWS (sequence, head) rows, turned back from the
    rotated cache: out = o @ H, H = [[S, S], [S, -S]] / sqrt(D) with S the HALF x HALF +-1
    Sylvester matrix (made in registers). H is linear, so each weighted partial w_s acc_s / denom
    is turned and the turned partials summed: the dots' M side is ROWS x CHUNK partials (at least
    16), so one row with many splits and 16 rows of one split fill the same tile, and the splits
    load CHUNK at a time instead of one by one (session 25's 16-row form, a split a step: 286 us
    of a batch-1 Llama-2 step on the H200, where 32 rows made 2 programs). The float32 partials
    enter the dots as hi + lo in DOT (SPLIT_HI_LO: two bf16 / fp16 parts, each times +-1 exact,
    summed in float32: ~16 bits kept where one 16-bit operand keeps 8-11); the interpreter's
    float32 DOT takes them whole."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = r < R
    r64 = tl.where(r_ok, r, 0).to(tl.int64)
    # every split's m and l at once: the largest m and the denominator of each row
    s = tl.arange(0, SPLITS_P)
    ok = r_ok[:, None] & (s < num_splits)[None, :]
    ml = ml_ptr + (r64[:, None] * num_splits + s[None, :]) * 2  # partials are contiguous (B, H, splits, ..)
    m = tl.load(ml, mask=ok, other=float("-inf"))
    m_max = tl.max(m, axis=1)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    denom = tl.sum(tl.exp2(m - m_max[:, None]) * tl.load(ml + 1, mask=ok, other=0.0), axis=1)
    inv = tl.where(denom > 0, 1.0 / tl.where(denom > 0, denom, 1.0), 0.0)  # nothing attended: 0
    sgn = sylvester_signs(HALF, DOT)
    d = tl.arange(0, HALF)
    c = tl.arange(0, CHUNK)
    top = tl.zeros([ROWS, HALF], tl.float32)
    bottom = tl.zeros([ROWS, HALF], tl.float32)
    for s0 in range(0, num_splits, CHUNK):  # one pass unless more than CHUNK splits
        sp = s0 + c
        okc = r_ok[:, None] & (sp < num_splits)[None, :]
        row = r64[:, None] * num_splits + sp[None, :]  # (ROWS, CHUNK)
        w = tl.exp2(tl.load(ml_ptr + row * 2, mask=okc, other=float("-inf")) - m_max[:, None]) * inv[:, None]
        base = part_ptr + row[:, :, None] * (2 * HALF) + d[None, None, :]
        lo = tl.reshape(tl.load(base, mask=okc[:, :, None], other=0.0) * w[:, :, None], (ROWS * CHUNK, HALF))
        hi = tl.reshape(tl.load(base + HALF, mask=okc[:, :, None], other=0.0) * w[:, :, None], (ROWS * CHUNK, HALF))
        top += tl.sum(tl.reshape(_times_signs(lo + hi, sgn, DOT, SPLIT_HI_LO), (ROWS, CHUNK, HALF)), axis=1)
        bottom += tl.sum(tl.reshape(_times_signs(lo - hi, sgn, DOT, SPLIT_HI_LO), (ROWS, CHUNK, HALF)), axis=1)
    scale = 1.0 / tl.sqrt(2.0 * HALF)
    b = r64 // H
    o_row = out_ptr + b * s_ob + (r64 - b * H) * s_oh
    tl.store(o_row[:, None] + d[None, :], (top * scale).to(out_ptr.dtype.element_ty), mask=r_ok[:, None])
    tl.store(o_row[:, None] + HALF + d[None, :], (bottom * scale).to(out_ptr.dtype.element_ty), mask=r_ok[:, None])


def reduce_rotate_tiling(splits: int) -> dict:
    """The rotating combine's constexprs for ``splits`` partials a row: rows a program so that the
    dots' M side (ROWS x CHUNK) is at least 16, every split's m / l in one load (SPLITS_P) and the
    partials at most REDUCE_ROTATE_CHUNK splits a pass."""
    splits_p = triton.next_power_of_2(splits)
    return dict(ROWS=max(1, 16 // splits_p), SPLITS_P=splits_p, CHUNK=min(splits_p, REDUCE_ROTATE_CHUNK))


@triton.jit
def _times_signs(x, sgn, DOT: tl.constexpr, SPLIT_HI_LO: tl.constexpr):
    """float32 (rows, HALF) x times the +-1 (HALF, HALF) matrix, float32 out."""
    if SPLIT_HI_LO:
        hi = x.to(DOT)
        lo = (x - hi.to(tl.float32)).to(DOT)
        y = tl.dot(lo, sgn, tl.dot(hi, sgn))
    else:
        y = tl.dot(x, sgn, input_precision="ieee")
    return y


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _n_sm(device: torch.device) -> int:
    return 4 if device.type != "cuda" else _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def num_splits(batch: int, kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """Splits per (sequence, KV head): enough programs for ~4 per SM, none shorter than
    MIN_SPLIT_TOKENS. Depends on host ints only."""
    want = triton.cdiv(4 * _n_sm(device), batch * kv_heads)
    return max(1, min(want, triton.cdiv(max_seq_len, MIN_SPLIT_TOKENS)))


def one_warp_splits(batch: int, kv_heads: int, max_seq_len: int, half: int, device: torch.device,
                    resident: int = 0, min_tokens: int = 0, least_wave: float = 1.0) -> int:
    """Splits per (sequence, KV head) for the one-warp programs: as many as fit one wave
    (``ONE_WARP_RESIDENT`` a SM), none shorter than ONE_WARP_MIN_SPLIT_TOKENS; 0 when even the most
    splits leave less than a wave (then the 4-warp configs are faster: Llama-3-8B heads, H200, batch 1,
    context 4096: 12.1 against 29.5 us). A partly filled second wave costs nearly a full one, so
    the count stops at one wave rather than overshooting it. ``resident``: programs a SM (0: the
    generic kernel's, ``ONE_WARP_RESIDENT``); ``min_tokens``: the shortest split (0:
    ONE_WARP_MIN_SPLIT_TOKENS); ``least_wave``: the part of a wave below which 0 is returned (the
    planes kernel's rule: 8 a SM, 64 tokens, a quarter wave). Host ints only."""
    slots = _n_sm(device) * (resident or ONE_WARP_RESIDENT.get(half, 8))
    pairs = batch * kv_heads
    most = triton.cdiv(max_seq_len, min_tokens or ONE_WARP_MIN_SPLIT_TOKENS)
    if pairs * most < least_wave * slots:
        return 0
    return max(1, min(most, slots // pairs))


def check_decode_args(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start) -> None:
    check_cache(k_cache, k_meta, "kv_decode_attention: K cache")
    check_cache(v_cache, v_meta, "kv_decode_attention: V cache")
    if q.dim() != 3:
        raise ValueError(f"kv_decode_attention: q must be (batch, heads, D), got {tuple(q.shape)}")
    b, h, d = q.shape
    check_head_dim(d, "kv_decode_attention")
    hkv = k_cache.shape[1]
    if k_cache.shape[3] * 2 != d or v_cache.shape != k_cache.shape or h % hkv:
        raise ValueError(f"kv_decode_attention: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)} / "
                         f"{tuple(v_cache.shape)} (heads must be a multiple of kv_heads)")
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype != torch.int32:
        raise ValueError(f"kv_decode_attention: block_table must be int32 ({b}, max_pages), got "
                         f"{block_table.dtype} {tuple(block_table.shape)}")
    for name, t in (("seq_lens", seq_lens), ("kv_start", kv_start)):
        if t is not None and (t.shape != (b,) or t.dtype != torch.int32):
            raise ValueError(f"kv_decode_attention: {name} must be int32 ({b},), got {t.dtype} {tuple(t.shape)}")


def kv_decode_attention_triton(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start,
                               sm_scale: float, max_seq_len: int = 0, k_rope=None, k_bias=None,
                               v_rotated: bool = False) -> torch.Tensor:
    """Launch the Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    g = h // hkv
    out = torch.empty((b, h, d), dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k_cache.stride() != v_cache.stride() or k_meta.stride() != v_meta.stride():
        raise ValueError("kv_decode_attention: K and V caches (and metas) must have the same strides")
    max_seq_len = max_seq_len or block_table.shape[1] * k_cache.shape[2]
    mha = g == 1 and k_rope is None and MHA_KERNEL and _as_words(k_cache) and _as_words(v_cache)
    gqa_planes = not mha and _gqa_kernel_fits(q, k_cache, v_cache, k_rope)
    one_warp_fits = ONE_WARP_GQA and not (mha or gqa_planes) and g > FMA_MAX_G and k_rope is None
    # the one-warp planes kernel: GQA (ONE_WARP_PLANES) or MHA (MHA_PLANES); with fewer programs
    # than its rule wants, the MHA kernel or the generic 4-warp configs
    warp_planes = _planes_fit(q, k_cache, v_cache, k_rope) and (
        (one_warp_fits and ONE_WARP_PLANES) or (mha and MHA_PLANES))
    one_warp_fits = one_warp_fits and (warp_planes or not _INTERPRET)  # the generic one-warp path is GPU-only
    rule = (ONE_WARP_PLANES_RESIDENT, PLANES_MIN_SPLIT_TOKENS, PLANES_LEAST_WAVE) if warp_planes else ()
    warp_splits = one_warp_splits(b, hkv, max_seq_len, d // 2, q.device, *rule) if one_warp_fits or warp_planes else 0
    one_warp = warp_splits > 0  # 0: less than a wave of one-warp programs, the 4-warp configs instead
    splits = warp_splits or num_splits(b, hkv, max_seq_len, q.device)
    one = splits == 1 and not v_rotated  # the reduce kernel turns the output back: it always runs then
    part = torch.empty((b, h, 1 if one else splits, d), dtype=torch.float32, device=q.device)
    ml = torch.empty((b, h, 1 if one else splits, 2), dtype=torch.float32, device=q.device)
    k_rope = k_rope.contiguous() if k_rope is not None else None
    args = (
        q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start if kv_start is not None else seq_lens,
        out, part, ml, k_rope if k_rope is not None else ml, k_bias.contiguous() if k_bias is not None else ml,
        sm_scale * _LOG2E, splits, h, k_rope.stride(0) if k_rope is not None else 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_meta.stride(0), k_meta.stride(1), k_meta.stride(2),
        block_table.stride(0),
        out.stride(0), out.stride(1),
    )
    if one_warp and warp_planes:
        _launch_gqa(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml,
                    sm_scale * _LOG2E, splits, one, warp=True)
    elif mha:
        _launch_mha(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml,
                    sm_scale * _LOG2E, splits, one)
    elif gqa_planes:
        _launch_gqa(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, out, part, ml,
                    sm_scale * _LOG2E, splits, one)
    else:
        fma = g <= FMA_MAX_G
        if fma:  # float32 operands on the CUDA cores, codes by the float32 mantissa trick
            block_g, dot, magic = triton.next_power_of_2(g), tl.float32, F32_MAGIC.value
        else:  # tensor-core tiles of at least 16 rows
            op_dtype = operand_dtype(q.dtype, k_rope is not None)
            block_g, dot = max(16, triton.next_power_of_2(g)), dot_dtype(op_dtype, _INTERPRET)
            # the one-warp path unpacks two codes per instruction (kv_tiles' inline asm): 5% on the H200
            magic = magic_bits(op_dtype, _INTERPRET, pairs=True if one_warp else None) if UNPACK_MAGIC else 0
        # PDL at batch 1 (session 41: Llama-3-8B's batch-1 decode at context 1280 runs this kernel,
        # the one launch of its step without PDL; not yet timed with it)
        meta = dict(G=g, BLOCK_G=block_g, HALF=d // 2, PAGE=k_cache.shape[2], HAS_START=kv_start is not None,
                    ONE_SPLIT=one, DOT=dot, MAGIC=magic, PREC=dot_precision(q.dtype), FMA=fma,
                    ROPE=k_rope is not None, HAS_KBIAS=k_bias is not None,
                    **pdl_switch.launch_options(q, one_token=b == 1))
        if _INTERPRET:
            wrap_triton(_decode_split_kernel)[(b, hkv, splits)](*args, **meta, BLOCK_N=16, PREFETCH=INTERPRET_PREFETCH)
        else:
            tuned = _decode_one_warp_tuned if one_warp else _decode_split_tuned
            wrap_triton(tuned)[(b, hkv, splits)](*args, **meta)
    if v_rotated:
        rows = b * h
        whole = _INTERPRET or q.dtype == torch.float32  # float32 dots (IEEE); else bf16 hi + lo parts
        tiling = reduce_rotate_tiling(splits)
        wrap_triton(_decode_reduce_rotate_kernel)[(triton.cdiv(rows, tiling["ROWS"]),)](
            part, ml, out, rows, h, splits, out.stride(0), out.stride(1),
            HALF=d // 2, **tiling, DOT=tl.float32 if whole else tl.bfloat16, SPLIT_HI_LO=not whole, num_warps=4,
        )
    elif not one:
        wrap_triton(_decode_reduce_kernel)[(b * h,)](
            part, ml, out, h, splits, out.stride(0), out.stride(1),
            D=d, SPLITS_P=triton.next_power_of_2(splits), num_warps=4,
            **pdl_switch.launch_options(out, one_token=b == 1),
        )
    return out


@triton_op("atom_ao::kv_decode_attention", mutates_args=())
def kv_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_meta: torch.Tensor,
                        v_meta: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                        kv_start: torch.Tensor | None, sm_scale: float, max_seq_len: int = 0,
                        k_rope: torch.Tensor | None = None, k_bias: torch.Tensor | None = None,
                        v_rotated: bool = False) -> torch.Tensor:
    """(batch, heads, D) queries, one per sequence, against the INT4 paged cache -> (batch, heads, D).

    ``seq_lens`` counts the cached tokens (the query's own K/V already written); ``max_seq_len``
    is an upper bound on them (0: the block table's capacity), used only to size the grid.
    ``k_rope`` / ``k_bias``: keys cached before RoPE (``atom_ao.kv.rope``): the (2, positions, D/2)
    cos / sin table and the (kv_heads, D) bias added back before rotating.
    ``v_rotated``: the cache holds ``v @ H`` (``kv_write(rotate_v=True)``); the output is turned
    back (``out @ H``) inside the split-combining kernel, which then always runs.
    CUDA runs the Triton kernels; other devices run the reference."""
    check_decode_args(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start)
    check_rope_args(k_rope, k_bias, k_cache.shape[1], q.shape[2], block_table.shape[1] * k_cache.shape[2], q.device,
                    "kv_decode_attention")
    if q.is_cuda:
        return kv_decode_attention_triton(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start,
                                          sm_scale, max_seq_len, k_rope, k_bias, v_rotated)
    return decode_attention_ref(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, sm_scale,
                                k_rope, k_bias, v_rotated)
