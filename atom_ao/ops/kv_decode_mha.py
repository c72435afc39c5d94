"""The decode kernel for one query head per KV head (MHA: Llama-2), warp-private token streams.

Since session 14 it serves what the one-warp planes kernel (``kv_decode_gqa``, ``MHA_PLANES``)
leaves: less than a quarter wave of programs (batch 1 at short context), head_dim 64 and float32
queries (keys cached before RoPE go to the generic kernel, as before). The planes kernel read
93-97% of copy at batch >= 16 where this one read 72-78% (H200, Llama-2-7B heads).

Same job, grid and outputs as ``kv_decode_attention._decode_split_kernel`` (one program per
sequence, head and split; partials combined by its reduce kernel), shaped for a single query
row, where a tensor-core tile would be 15/16 padding and the generic CUDA-core path spends its
time moving (tokens, D/2) float tiles between layouts through shared memory.

Here a step's tile is (WARPS, 8, D/8) int32 words (the cache viewed as int32): warp w reads 8
whole cache rows, each thread 16 contiguous bytes of one row, and every reduction of a step
stays inside a warp. The score of a row is a sum over the row's 4 threads; the running max, sum
and the accumulators are per warp (each thread keeps its own columns of its own row slot); the
warps' states are combined once, after the loop, by log-sum-exp. So a step has no barrier and no
shared memory.

Codes stay packed in their words until used (4 per register, not 1: room for the prefetched
tile) and leave them as floats by the mantissa trick *in place*: ``(w & (15 << P)) | bits(2^23)``
is exactly 2^23 + code * 2^P for a nibble at bit P <= 19, so one AND-OR and one subtraction make
code * 2^P. The 2^-P is folded into that nibble's query column (scores) and applied once at the
end (values): exact, powers of two. Unfolded, the three nibbles above bit 19 take one shift of the
word first. Per code: ~1 integer op, 1 subtraction, 1 multiply-add (values: + the rescale).

FOLD (the default) takes every nibble to bit 15 (low nibble of a byte) or 19 (high) by one shift
per byte of the word (four a word, where the unfolded form needs one) and skips the subtraction:
the float is then 2^P (2^(23 - P) + code), and the offsets 2^(23 - P) (256 and 16) are removed
once per row (scores: a query term computed at the start; values: 2^(23 - P) times the running
sum of p * scale, with the zero points' share). Per code: 1 LOP3 and 1 FMA (values: + the
rescale), the shifts a quarter of an instruction a code. The offsets are at most 16 x the codes
(256 for the low nibbles): ~5 of fp32's 24 bits, far below the 4-bit codes' own error.

PREFETCH: each step issues the next step's loads, and the block-table lookup of the one after,
before it unpacks its own tile (Triton's pipeliner only handles loads that feed a dot): a step
then waits on neither the page lookup nor its data. Loading two steps ahead (same 128 registers)
and two rows a thread per step (168 registers) were both slower at every size timed on the H200
(batch 64, context 8192: 1266 and 1294 against 1107 us; session 13).
"""

from __future__ import annotations

import triton
import triton.language as tl

from atom_ao.ops.kv_tiles import load_kv_meta, online_softmax, split_tiles

ROWS = 8  # cache rows per warp and step: 8 rows x 4 threads x 16 bytes = one warp at D = 128
# The 8 nibbles of word j (``kv.format.pack_kv``): byte k holds column 4j + k in its low nibble and
# column D/2 + 4j + k in its high one (``_planes`` takes each to a float)


# The autotuner's choices: 2 or 4 warps with the prefetch. Every case of session 13's per-config timings
# (H200, Llama-2-7B heads: batch 64 at 1024 and 8192, batch 16 at 8192, batch 1 at 32768;
# results/h200/attention_explore_mha_prefetch2_session13.log) had one of these two best, and the other
# within 10%; 8 warps or no prefetch was 1.3-2.9x slower. Those were dropped (session 24) because an
# autotuner takes its pick on the first call's data, which in a generate loop is the first decode
# step's near-empty cache, where every config times alike. (Session 24: the same 8-layer command ran
# decode_mha_kernel at 13.9 us a call in one process and 5.4 in another,
# session24_bench_hf_generate_*_rotate_{fused,profile}_s24; such a pick is the likely cause, not confirmed.)
def mha_configs():
    return [
        triton.Config({"WARPS": w, "PREFETCH": True}, num_warps=w, num_stages=1)
        for w in (2, 4)
    ]


# (w & (15 << P)) | bits(2^23) as one LOP3 (0xEA: a & b | c); written as an AND and an OR the
# compiler emits two instructions per code, a third of the loop's issue slots
_LOP0 = tl.constexpr("lop3.b32 $0, $1, 15, 1258291200, 0xEA;")
_LOP4 = tl.constexpr("lop3.b32 $0, $1, 240, 1258291200, 0xEA;")
_LOP8 = tl.constexpr("lop3.b32 $0, $1, 3840, 1258291200, 0xEA;")
_LOP12 = tl.constexpr("lop3.b32 $0, $1, 61440, 1258291200, 0xEA;")
_LOP16 = tl.constexpr("lop3.b32 $0, $1, 983040, 1258291200, 0xEA;")
_LOP15 = tl.constexpr("lop3.b32 $0, $1, 491520, 1258291200, 0xEA;")
_LOP19 = tl.constexpr("lop3.b32 $0, $1, 7864320, 1258291200, 0xEA;")


@triton.jit
def _nib(w, P: tl.constexpr, ASM: tl.constexpr, FOLD: tl.constexpr):
    """Bits P..P+3 of the int32 words w (P <= 19) -> float32 code * 2^P by the mantissa trick in
    place; FOLD: 2^23 + code * 2^P (the caller removes the offset once per row)."""
    if ASM:
        if P == 15:
            asm: tl.constexpr = _LOP15
        elif P == 19:
            asm: tl.constexpr = _LOP19
        elif P == 0:
            asm: tl.constexpr = _LOP0
        elif P == 4:
            asm: tl.constexpr = _LOP4
        elif P == 8:
            asm: tl.constexpr = _LOP8
        elif P == 12:
            asm: tl.constexpr = _LOP12
        else:
            asm: tl.constexpr = _LOP16
        bits = tl.inline_asm_elementwise(asm, "=r,r", [w], dtype=tl.int32, is_pure=True, pack=1)
    else:
        bits = (w & (15 << P)) | 0x4B000000
    if FOLD:
        return bits.to(tl.float32, bitcast=True)
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _planes(w, ASM: tl.constexpr, FOLD: tl.constexpr):
    """The 8 nibbles of the words w as floats (``_nib``), byte b's low then high nibble (columns
    4 j + b and HALF + 4 j + b): FOLD at bits 15 / 19 of four shifted words, else at bits 0, 4, 8,
    12, 16 of the word and 8, 12, 16 of the word >> 12."""
    if FOLD:  # one shift a byte: low nibbles at bit 15, high at 19
        w0 = w << 15
        w1 = w << 7
        w2 = w >> 1
        w3 = w >> 9
        return (_nib(w0, 15, ASM, FOLD), _nib(w0, 19, ASM, FOLD), _nib(w1, 15, ASM, FOLD), _nib(w1, 19, ASM, FOLD),
                _nib(w2, 15, ASM, FOLD), _nib(w2, 19, ASM, FOLD), _nib(w3, 15, ASM, FOLD), _nib(w3, 19, ASM, FOLD))
    else:  # bits 0..19 from the word, 20..31 from the word >> 12
        wh = w >> 12
        return (_nib(w, 0, ASM, FOLD), _nib(w, 4, ASM, FOLD), _nib(w, 8, ASM, FOLD), _nib(w, 12, ASM, FOLD),
                _nib(w, 16, ASM, FOLD), _nib(wh, 8, ASM, FOLD), _nib(wh, 12, ASM, FOLD), _nib(wh, 16, ASM, FOLD))


@triton.jit
def _q_plane(q_row, jw, COL0: tl.constexpr, P: tl.constexpr):
    """The query columns COL0 + 4 j of a nibble plane, times 2^-P, shaped to broadcast over a tile."""
    return (tl.load(q_row + COL0 + 4 * jw).to(tl.float32) * (1.0 / (1 << P)))[None, None, :]


@triton.jit
def _store_plane(o_row, jw, acc, pz, wt, inv, COL0: tl.constexpr, P: tl.constexpr):
    """One plane's output columns: its accumulator back from units of 2^P, the zero points' share
    (with FOLD: less the offsets) added, the warps combined by their weights, scaled by inv,
    stored at COL0 + 4 j."""
    o = tl.sum((tl.sum(acc, axis=1) * (1.0 / (1 << P)) + pz[:, None]) * wt[:, None], axis=0) * inv
    tl.store(o_row + COL0 + 4 * jw, o.to(o_row.dtype.element_ty))


@triton.jit
def _mha_pages(bt_row, i, tile_hi, seq_len, PAGE: tl.constexpr, WARPS: tl.constexpr, ROWS: tl.constexpr):
    """The pages of step i's rows: one scalar when a step lies in one page, else one per row. A
    step at or past tile_hi looks up step 0 (every table has it); ``_mha_tile`` reads nothing there."""
    BLOCK: tl.constexpr = WARPS * ROWS
    n0 = tl.where(i < tile_hi, i, 0) * BLOCK
    if PAGE % BLOCK == 0:
        page = tl.load(bt_row + n0 // PAGE).to(tl.int64)
    else:
        t = n0 + tl.arange(0, WARPS)[:, None] * ROWS + tl.arange(0, ROWS)[None, :]
        page = tl.load(bt_row + t // PAGE, mask=t < seq_len, other=0).to(tl.int64)
    return page


@triton.jit
def _mha_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, page, i, tile_hi, seq_len, head,
              s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, HALF: tl.constexpr, PAGE: tl.constexpr, WARPS: tl.constexpr,
              ROWS: tl.constexpr):
    """Words (WARPS, ROWS, HALF / 4) int32, scales and zeros (WARPS, ROWS) float32 of K and V for
    step i, whose pages ``_mha_pages`` gave (cache strides in words, meta strides in elements).
    Masked rows, and every row of a step at or past tile_hi, read 0."""
    BLOCK: tl.constexpr = WARPS * ROWS
    inside = i < tile_hi
    n0 = tl.where(inside, i, 0) * BLOCK
    slot = tl.arange(0, WARPS)[:, None] * ROWS + tl.arange(0, ROWS)[None, :]
    t = n0 + slot
    ok = t < tl.where(inside, seq_len, 0)
    if PAGE % BLOCK == 0:  # the step lies in one page: contiguous rows
        off = n0 % PAGE + slot
    else:
        off = t % PAGE
    row_c = page * s_cp + head * s_ch + off * s_ct
    row_m = page * s_mp + head * s_mh + off
    cols = tl.arange(0, HALF // 4)[None, None, :]
    kb = tl.load(kc_ptr + row_c[:, :, None] + cols, mask=ok[:, :, None], other=0)
    vb = tl.load(vc_ptr + row_c[:, :, None] + cols, mask=ok[:, :, None], other=0)
    ks, kz, vs, vz = load_kv_meta(km_ptr, vm_ptr, row_m, ok, s_mw)
    return kb, ks, kz, vb, vs, vz


@triton.jit
def decode_mha_kernel(
    q_ptr, kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_ptr, len_ptr, start_ptr, out_ptr, part_ptr, ml_ptr,
    qk_scale, num_splits, H,
    s_qb, s_qh, s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, s_btb, s_ob, s_oh,
    HALF: tl.constexpr, PAGE: tl.constexpr, HAS_START: tl.constexpr, ONE_SPLIT: tl.constexpr,
    WARPS: tl.constexpr, PREFETCH: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr,
    FOLD: tl.constexpr,
):
    BLOCK: tl.constexpr = WARPS * ROWS
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes a Python float as fp64
    seq_len, start, tile_lo, tile_hi = split_tiles(len_ptr, start_ptr, b, sp, num_splits, HAS_START, BLOCK)

    q_row = q_ptr + b.to(tl.int64) * s_qb + h * s_qh
    d = tl.arange(0, HALF)
    q_lo_sum = tl.sum(tl.load(q_row + d).to(tl.float32), axis=0)
    q_hi_sum = tl.sum(tl.load(q_row + HALF + d).to(tl.float32), axis=0)
    q_sum = q_lo_sum + q_hi_sum
    if FOLD:  # the offsets' share of every score: sum_d q_d 2^(23 - P_d)
        q_off = q_lo_sum * 256.0 + q_hi_sum * 16.0
    else:
        q_off = 0.0
    jw = tl.arange(0, HALF // 4)
    # the query column of each nibble plane, times 2^-P (see the module docstring)
    # the bit each plane's nibble sits at (``_planes``)
    P0: tl.constexpr = 15 if FOLD else 0
    P1: tl.constexpr = 19 if FOLD else 4
    P2: tl.constexpr = 15 if FOLD else 8
    P3: tl.constexpr = 19 if FOLD else 12
    P4: tl.constexpr = 15 if FOLD else 16
    P5: tl.constexpr = 19 if FOLD else 8
    P6: tl.constexpr = 15 if FOLD else 12
    P7: tl.constexpr = 19 if FOLD else 16
    q0 = _q_plane(q_row, jw, 0, P0)
    q1 = _q_plane(q_row, jw, HALF, P1)
    q2 = _q_plane(q_row, jw, 1, P2)
    q3 = _q_plane(q_row, jw, HALF + 1, P3)
    q4 = _q_plane(q_row, jw, 2, P4)
    q5 = _q_plane(q_row, jw, HALF + 2, P5)
    q6 = _q_plane(q_row, jw, 3, P6)
    q7 = _q_plane(q_row, jw, HALF + 3, P7)
    slot = tl.arange(0, WARPS)[:, None] * ROWS + tl.arange(0, ROWS)[None, :]

    m_i = tl.full([WARPS], float("-inf"), tl.float32)
    l_i = tl.zeros([WARPS], tl.float32)
    pz_i = tl.zeros([WARPS], tl.float32)  # sum of p * (V zero): the zero points' share of the output
    ps_i = tl.zeros([WARPS], tl.float32)  # FOLD: sum of p * (V scale), times the offsets: their share
    # the value accumulators of the 8 nibble planes, in units of 2^P
    a0 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a1 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a2 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a3 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a4 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a5 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a6 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    a7 = tl.zeros([WARPS, ROWS, HALF // 4], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * s_btb
    if PREFETCH:  # step tile_lo's bytes, step tile_lo + 1's pages
        pg = _mha_pages(bt_row, tile_lo, tile_hi, seq_len, PAGE, WARPS, ROWS)
        kb, ks, kz, vb, vs, vz = _mha_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, pg, tile_lo, tile_hi, seq_len, h,
                                           s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, HALF, PAGE, WARPS, ROWS)
        pg = _mha_pages(bt_row, tile_lo + 1, tile_hi, seq_len, PAGE, WARPS, ROWS)
    for i in range(tile_lo, tile_hi):
        if PREFETCH:
            # issue step i + 1's loads (their pages came a step ago) and step i + 2's page lookup,
            # then work on step i: neither waits on the other
            kb_n, ks_n, kz_n, vb_n, vs_n, vz_n = _mha_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, pg, i + 1, tile_hi,
                                                           seq_len, h, s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, HALF,
                                                           PAGE, WARPS, ROWS)
            pg = _mha_pages(bt_row, i + 2, tile_hi, seq_len, PAGE, WARPS, ROWS)
        else:
            pg = _mha_pages(bt_row, i, tile_hi, seq_len, PAGE, WARPS, ROWS)
            kb, ks, kz, vb, vs, vz = _mha_tile(kc_ptr, vc_ptr, km_ptr, vm_ptr, pg, i, tile_hi, seq_len, h,
                                               s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, HALF, PAGE, WARPS, ROWS)
        t = i * BLOCK + slot
        ok = t < seq_len
        if HAS_START:
            ok = ok & (t >= start)
        k0, k1, k2, k3, k4, k5, k6, k7 = _planes(kb, ASM, FOLD)
        raw = tl.sum(k0 * q0 + k1 * q1 + k2 * q2 + k3 * q3 + k4 * q4 + k5 * q5 + k6 * q6 + k7 * q7,
                     axis=2)  # (WARPS, ROWS): q . codes (+ q_off)
        s = ((raw - q_off) * ks + q_sum * kz) * qk_scale
        s = tl.where(ok, s, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        pv = p * vs
        pv3 = pv[:, :, None]
        a = alpha[:, None, None]
        v0, v1, v2, v3, v4, v5, v6, v7 = _planes(vb, ASM, FOLD)
        a0 = a0 * a + pv3 * v0
        a1 = a1 * a + pv3 * v1
        a2 = a2 * a + pv3 * v2
        a3 = a3 * a + pv3 * v3
        a4 = a4 * a + pv3 * v4
        a5 = a5 * a + pv3 * v5
        a6 = a6 * a + pv3 * v6
        a7 = a7 * a + pv3 * v7
        pz_i = pz_i * alpha + tl.sum(p * vz, axis=1)
        if FOLD:
            ps_i = ps_i * alpha + tl.sum(pv, axis=1)
        if PREFETCH:
            kb, ks, kz, vb, vs, vz = kb_n, ks_n, kz_n, vb_n, vs_n, vz_n

    # combine the warps' states: weights 2^(m_w - max m); a warp that saw no key weighs 0
    m = tl.max(m_i, axis=0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    wt = tl.exp2(m_i - m_use)
    l_sum = tl.sum(l_i * wt, axis=0)
    if ONE_SPLIT:
        inv = tl.where(l_sum > 0, 1.0 / tl.where(l_sum > 0, l_sum, 1.0), 0.0)
        o_row = out_ptr + b.to(tl.int64) * s_ob + h * s_oh
    else:
        row = (b.to(tl.int64) * H + h) * num_splits + sp
        inv = 1.0
        o_row = part_ptr + row * (2 * HALF)
        tl.store(ml_ptr + row * 2, m)
        tl.store(ml_ptr + row * 2 + 1, l_sum)
    if FOLD:  # the offsets' share of each plane: 2^(23 - P) sum_t p_t (V scale)_t
        pz_lo = pz_i - 256.0 * ps_i
        pz_hi = pz_i - 16.0 * ps_i
    else:
        pz_lo = pz_i
        pz_hi = pz_i
    _store_plane(o_row, jw, a0, pz_lo, wt, inv, 0, P0)
    _store_plane(o_row, jw, a1, pz_hi, wt, inv, HALF, P1)
    _store_plane(o_row, jw, a2, pz_lo, wt, inv, 1, P2)
    _store_plane(o_row, jw, a3, pz_hi, wt, inv, HALF + 1, P3)
    _store_plane(o_row, jw, a4, pz_lo, wt, inv, 2, P4)
    _store_plane(o_row, jw, a5, pz_hi, wt, inv, HALF + 2, P5)
    _store_plane(o_row, jw, a6, pz_lo, wt, inv, 3, P6)
    _store_plane(o_row, jw, a7, pz_hi, wt, inv, HALF + 3, P7)
