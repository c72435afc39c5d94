"""The decode kernel for grouped queries (GQA, head_dim 128), tensor cores on nibble planes.

Same job, grid and outputs as ``kv_decode_attention._decode_split_kernel`` (one program per
sequence, KV head and split, serving the group's query heads; partials combined by its reduce
kernel). The cache is read as int32 words (D/8 a row, ``kv_decode_mha``'s view) and never
rearranged: nibble P of word j of every row is one "plane", a (tokens, D/8) tile of codes whose
column j is channel ``col(P, j)``. The scores are the sum over the 8 planes of (plane) x (the
query columns of that plane), each a K = D/8 = 16 dot, with the keys on the MMA's M side
(S^T = K Q^T: the group's heads are its N side) and the queries' plane columns loaded once.
Triton loads the word tiles straight into the dot operand layouts and unpacks there: no code
tile is reordered.

Two forms. WARP (the default for GQA at head_dim 128, ``kv_decode_attention.ONE_WARP_PLANES``):
one warp a program, so the softmax along the tokens of S^T stays inside the warp (``mma.sync``,
32 tokens a step). The scores are 8 dots (one a plane) as above; P.V is turned around too:
O_P^T (D/8, heads) += V_P^T P^T for each plane, so the heads are the N side of every dot
(padded to 8 where the generic kernel pads its query rows to 16) and P^T is used as the score
dots produced it. The planes come two words at a time from inline asm (``_word_pairs_asm``: each
result register is one MMA operand register, the two words being neighbours along its K: along
the words for the keys, along the tokens for the transposed values). The scales are loaded a step
ahead (Triton pipelines only the loads that feed dots) and 5 stages put the word tiles a whole
step ahead (with 3, Triton's pipeliner gave the block-table lookup its own stage and the tiles
were issued after a step's math and waited for at once). H200, Llama-3-8B heads: batch 64,
context 8192 218 us (94% of copy) against 416 for the generic one-warp kernel.

Tried and dropped (session 38, ``results/h200/session38_attention_combine_ab_s38.log``): the
splits combined by the last split program of each (sequence, KV head), found by an atomic count,
instead of the reduce kernel after this one. In a CUDA graph, us: Llama-2-7B batch 1 context
32768 61.2 -> 57.5, 8192 20.0 -> 25.3; Llama-3-8B batch 1 8192 10.6 -> 50.3, 32768 21.1 -> 59.0
(the last program reads every split's partials back and combines the group's heads alone);
batch 16-64 within 1%.

The 4-warp form (wgmma, 64-token steps; ``GQA_KERNEL``, off; P.V takes the 8 value planes
joined along N in one dot, output channels in that joined order, put back in place by the
store): offline 844 instructions a step against the generic kernel's 898, but its softmax runs
along the tokens, which the wgmma spreads over the 4 warps, so every step's max and sum cross
warps (shuffles and a barrier); timed slower than the generic kernel (H200, session 9: 634
against 540 us at batch 64, context 8192).

Codes become bf16 / fp16 operands by the mantissa trick without the subtraction: (c | MAGIC)
read as a 16-bit float is OFFSET + c (128 + c for bf16, 1024 + c for fp16), and the OFFSET share
of each dot is taken off once per tile in float32: the scores' (OFFSET * the query's sum) after
their dots, P.V's (OFFSET * the sum of the P row as the dot saw it) through the dot's accumulator
input, so the accumulators never carry the offsets of earlier tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl

from atom_ao.ops import pdl as pdl_switch
from atom_ao.ops.pdl import wait_then_release  # a bare name: Inductor copies the jit helpers a kernel calls by name
from atom_ao.ops.kv_tiles import load_kv_meta, online_softmax, paged_rows, split_tiles


def gqa_configs():
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bn, w, st in ((64, 4, 3), (64, 4, 2), (128, 8, 3), (64, 8, 3))
    ]


@triton.jit
def _col0(P: tl.constexpr, HALF: tl.constexpr):
    """The channel of nibble P of word 0 (``kv.format.pack_kv``: byte k holds channel k in its
    low nibble and HALF + k in its high one; word j adds 4 j)."""
    if P % 8 == 0:
        return P // 8
    return HALF + P // 8


@triton.jit
def _plane(w, P: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr):
    """Nibble P of the int32 words w -> OFFSET + code in DOT (MAGIC != 0), or the code itself."""
    c = (w >> P) & 15
    if MAGIC != 0:
        return (c | MAGIC).to(tl.int16).to(DOT, bitcast=True)
    return c.to(tl.float32).to(DOT)


def _word_pairs_asm(magic16: int) -> str:
    """Two int32 words -> their 8 nibble planes, each a 16-bit float pair (word 0's nibble in the
    low half, word 1's in the high): the halves of the two words interleaved (two PRMTs), then
    per plane one shift and one LOP3 ((x & 0x000F000F) | magic): 16 instructions for 16 codes,
    each result one register of an MMA operand when the two words are neighbours along its K."""
    magic = magic16 * 0x10001
    lop = lambda dst, src: f"lop3.b32 {dst}, {src}, 0x000F000F, {magic:#x}, 0xEA;"  # noqa: E731
    parts = ["{ .reg .b32 lo, hi, t;", "prmt.b32 lo, $8, $9, 0x5410;", "prmt.b32 hi, $8, $9, 0x7632;"]
    for half, src in ((0, "lo"), (4, "hi")):
        parts.append(lop(f"${half}", src))
        for i, sh in ((1, 4), (2, 8), (3, 12)):
            parts += [f"shr.u32 t, {src}, {sh};", lop(f"${half + i}", "t")]
    parts.append("}")
    return " ".join(parts)  # one line (see kv_tiles._pairs_asm)


_WORD_PAIRS_BF16 = tl.constexpr(_word_pairs_asm(0x4300))
_WORD_PAIRS_F16 = tl.constexpr(_word_pairs_asm(0x6400))


def _word_pairs_hi16_asm() -> str:
    """``_word_pairs_asm`` for fp16 with each byte's high nibble taken in place: (x & 0x00F000F0) |
    0x6400 is 1024 + 16 c in fp16 (10 mantissa bits hold bits 4-7; bf16's 7 do not), so a
    16-bit half needs one shift (by 8) for its four nibbles instead of three: 12 instructions for
    16 codes instead of 16, all of them on the integer pipe that Nsight Compute found throttling
    the kernel. Planes P = 4, 12, 20, 28 come out as 1024 + 16 c (``_plane_hi16``)."""
    magic = 0x6400 * 0x10001
    lop = lambda dst, src, mask: f"lop3.b32 {dst}, {src}, {mask:#x}, {magic:#x}, 0xEA;"  # noqa: E731
    parts = ["{ .reg .b32 lo, hi, t;", "prmt.b32 lo, $8, $9, 0x5410;", "prmt.b32 hi, $8, $9, 0x7632;"]
    for half, src in ((0, "lo"), (4, "hi")):
        parts += [lop(f"${half}", src, 0x000F000F), lop(f"${half + 1}", src, 0x00F000F0), f"shr.u32 t, {src}, 8;",
                  lop(f"${half + 2}", "t", 0x000F000F), lop(f"${half + 3}", "t", 0x00F000F0)]
    parts.append("}")
    return " ".join(parts)


_WORD_PAIRS_HI16 = tl.constexpr(_word_pairs_hi16_asm())


@triton.jit
def _plane_hi16(w, P: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr):
    """Nibble P (a byte's high nibble, P % 8 == 4) of the words w as 1024 + 16 c (fp16, HI16)."""
    return (((w >> (P - 4)) & 0xF0) | MAGIC).to(tl.int16).to(DOT, bitcast=True)


@triton.jit
def _planes8(w, DOT: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr, HI16: tl.constexpr = False):
    """The 8 nibble planes (P = 0, 4, .., 28) of the int32 words w, as ``_plane`` makes them; ASM:
    by ``_word_pairs_asm``, two words at a time (neighbours along w's last dimension). HI16 (fp16
    MAGIC only): the high nibbles' planes (P = 4, 12, ..) as 1024 + 16 c."""
    if HI16:
        if ASM:
            return tl.inline_asm_elementwise(_WORD_PAIRS_HI16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [w],
                                             dtype=(tl.float16,) * 8, is_pure=True, pack=2)
        return (_plane(w, 0, DOT, MAGIC), _plane_hi16(w, 4, DOT, MAGIC), _plane(w, 8, DOT, MAGIC),
                _plane_hi16(w, 12, DOT, MAGIC), _plane(w, 16, DOT, MAGIC), _plane_hi16(w, 20, DOT, MAGIC),
                _plane(w, 24, DOT, MAGIC), _plane_hi16(w, 28, DOT, MAGIC))
    if ASM:
        if MAGIC == 0x4300:
            return tl.inline_asm_elementwise(_WORD_PAIRS_BF16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [w],
                                             dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)
        else:
            return tl.inline_asm_elementwise(_WORD_PAIRS_F16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [w],
                                             dtype=(tl.float16,) * 8, is_pure=True, pack=2)
    else:
        return (_plane(w, 0, DOT, MAGIC), _plane(w, 4, DOT, MAGIC), _plane(w, 8, DOT, MAGIC),
                _plane(w, 12, DOT, MAGIC), _plane(w, 16, DOT, MAGIC), _plane(w, 20, DOT, MAGIC),
                _plane(w, 24, DOT, MAGIC), _plane(w, 28, DOT, MAGIC))


@triton.jit
def _store_plane_t(o_base, o_stride, heads, g_ok, jw, acc, corr, inv, P: tl.constexpr, HALF: tl.constexpr,
                   SCALE: tl.constexpr = 1.0):
    """One plane's (D/8, BLOCK_G) transposed accumulator -> output channels col(P, j) of each head
    (SCALE: 1/16 for a HI16 plane, whose codes entered the dots 16 x)."""
    if SCALE != 1.0:
        acc = acc * SCALE
    o = (acc + corr[None, :]) * inv[None, :]
    col = _col0(P, HALF) + 4 * jw
    tl.store(o_base + heads[None, :] * o_stride + col[:, None], o.to(o_base.dtype.element_ty), mask=g_ok[None, :])


@triton.jit
def _q_plane_t(q_base, heads, g_ok, s_qh, jw, P: tl.constexpr, HALF: tl.constexpr, DOT: tl.constexpr,
               HI16: tl.constexpr = False):
    """Q^T rows of plane P: (D/8, BLOCK_G), the query channels col(P, j) of each head (HI16: a
    high-nibble plane's times 1/16, exact, against its codes' 16 x)."""
    col = _col0(P, HALF) + 4 * jw
    q = tl.load(q_base + heads[None, :] * s_qh + col[:, None], mask=g_ok[None, :], other=0.0).to(DOT)
    if HI16 and P % 8 == 4:
        q = q * 0.0625
    return q


@triton.jit
def _meta_tile(km_ptr, vm_ptr, bt_row, i, tile_hi, seq_len, s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk,
               PAGE: tl.constexpr, BLOCK_N: tl.constexpr):
    """K and V scales and zeros (BLOCK_N,) float32 of step i (0 past tile_hi: nothing read)."""
    inside = i < tile_hi
    n0 = tl.where(inside, i, 0) * BLOCK_N
    ok = n0 + tl.arange(0, BLOCK_N) < tl.where(inside, seq_len, 0)
    _, row_m = paged_rows(bt_row, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE, BLOCK_N)
    return load_kv_meta(km_ptr, vm_ptr, row_m, ok, s_mw)


@triton.jit
def _offset_share(pt, OFFSET: tl.constexpr, AXIS: tl.constexpr):
    """OFFSET x the P sums of a P.V dot (pt as the dot sees it, summed along its tokens' AXIS),
    shaped to broadcast against the dot's accumulator: the share of the codes' OFFSET."""
    return tl.expand_dims(OFFSET * tl.sum(pt.to(tl.float32), axis=AXIS), AXIS)


@triton.jit
def _plane_scores(kw, q0, q1, q2, q3, q4, q5, q6, q7, q_sum, ks, kz, qk_scale,
                  DOT: tl.constexpr, MAGIC: tl.constexpr, OFFSET: tl.constexpr, ASM: tl.constexpr,
                  HI16: tl.constexpr = False, q_off=None):
    """S^T (BLOCK_N, BLOCK_G), log2-scaled: the sum over the 8 planes of K_P Q_P^T of the word tile
    kw, its OFFSET share (OFFSET * q_sum; HI16: ``q_off``) taken off, times the keys' scales, plus
    their zeros."""
    k0, k1, k2, k3, k4, k5, k6, k7 = _planes8(kw, DOT, MAGIC, ASM, HI16)
    raw = tl.dot(k0, q0)
    raw = tl.dot(k1, q1, raw)
    raw = tl.dot(k2, q2, raw)
    raw = tl.dot(k3, q3, raw)
    raw = tl.dot(k4, q4, raw)
    raw = tl.dot(k5, q5, raw)
    raw = tl.dot(k6, q6, raw)
    raw = tl.dot(k7, q7, raw)
    if HI16:
        raw = raw - q_off[None, :]
    else:
        raw = raw - OFFSET * q_sum[None, :]
    return (raw * ks[:, None] + kz[:, None] * q_sum[None, :]) * qk_scale


@triton.jit
def _warp_step(kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_row, i, tile_hi, seq_len, start,
               s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, qk_scale, q_sum,
               q0, q1, q2, q3, q4, q5, q6, q7, a0, a1, a2, a3, a4, a5, a6, a7,
               m_i, l_i, corr, ks, kz, vs, vz,
               HAS_START: tl.constexpr, HALF: tl.constexpr, PAGE: tl.constexpr,
               DOT: tl.constexpr, MAGIC: tl.constexpr, OFFSET: tl.constexpr, ASM: tl.constexpr,
               BLOCK_N: tl.constexpr, HI16: tl.constexpr = False, q_off=None):
    """One 32-token step of the one-warp form (tile i; its scales ks..vz were loaded the step
    before, the next step's are loaded here). Session 28 (H200) timed a peeled form, full tiles
    unmasked in a loop of their own and the partial tile after it (offline 923 -> 808 instructions
    a step, 168 -> 194 registers): batch 64 3646 -> 3792 us of this kernel a Llama-2-7B step,
    batch 1 194 -> 201 (``results/h200/session28_generate_peel.log``), and removed it.
    V's word tile is loaded as (D/8, BLOCK_N), through transposed pointers, rather than loaded as
    K's and transposed in registers: the copy to shared memory then keeps global memory's word
    order and moves 16 bytes an instruction (4 when the shared tile was token-major). Offline,
    sm_90a: 923 -> 743 instructions a step. H200, session 29 (an A/B explore since removed,
    ``results/h200/session29_attention_planes_ab_s29.log``): Llama-2-7B heads batch 64 / 1056
    114.0 -> 92.9 us, batch 1 / 32768 61.7 -> 50.3; Llama-3-8B batch 64 / 8192 221.6 -> 186.8,
    batch 1 / 32768 22.8 -> 19.6. Capping the registers as well (maxnreg 128 with one split, 152
    with several) was within 2% either way and was dropped: the H200's Triton 3.6 builds the
    kernel in 128 registers anyway (Nsight Compute), where Triton 3.9 offline takes 164-168."""
    jw = tl.arange(0, HALF // 4)
    n0 = i * BLOCK_N
    t = n0 + tl.arange(0, BLOCK_N)
    ok = t < seq_len
    row_c, row_m = paged_rows(bt_row, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE, BLOCK_N)
    kw = tl.load(kc_ptr + row_c[:, None] + jw[None, :], mask=ok[:, None], other=0)
    # V's words as (D/8, BLOCK_N): the shared copy keeps global memory's word order (16-byte copies)
    vwt = tl.load(vc_ptr + row_c[None, :] + jw[:, None], mask=ok[None, :], other=0)
    ks_n, kz_n, vs_n, vz_n = _meta_tile(km_ptr, vm_ptr, bt_row, i + 1, tile_hi, seq_len,
                                        s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, PAGE, BLOCK_N)

    sc = _plane_scores(kw, q0, q1, q2, q3, q4, q5, q6, q7, q_sum, ks, kz, qk_scale, DOT, MAGIC, OFFSET, ASM,
                       HI16, q_off)
    if HAS_START:
        ok = ok & (t >= start)
    sc = tl.where(ok[:, None], sc, float("-inf"))
    # O_P^T (D/8, BLOCK_G) += V_P^T P^T for each plane: channels on the dots' M side, the
    # group's heads on N; the transposed word tile unpacks in pairs along the tokens
    p, alpha, m_i, l_i = online_softmax(sc, m_i, l_i, 0)  # (BLOCK_N, BLOCK_G)
    pt = (p * vs[:, None]).to(DOT)
    corr = corr * alpha + tl.sum(p * vz[:, None], axis=0)
    v0, v1, v2, v3, v4, v5, v6, v7 = _planes8(vwt, DOT, MAGIC, ASM, HI16)
    al = alpha[None, :]
    # every plane's codes enter as OFFSET + c (HI16's high planes OFFSET + 16 c): the step's OFFSET
    # share leaves through the dot's accumulator input (one FMA an element), so the accumulators
    # hold only the codes' part. Subtracted once at the end instead, the accumulators carried
    # OFFSET x the whole split's P sum and the tensor cores' fp32 sums lost the codes' low bits:
    # H200, session 31, Llama-3-8B heads, batch 3 / 33000 with HI16 (OFFSET 1024), 2.09% error.
    off = _offset_share(pt, OFFSET, 0)
    a0 = tl.dot(v0, pt, a0 * al - off)
    a1 = tl.dot(v1, pt, a1 * al - off)
    a2 = tl.dot(v2, pt, a2 * al - off)
    a3 = tl.dot(v3, pt, a3 * al - off)
    a4 = tl.dot(v4, pt, a4 * al - off)
    a5 = tl.dot(v5, pt, a5 * al - off)
    a6 = tl.dot(v6, pt, a6 * al - off)
    a7 = tl.dot(v7, pt, a7 * al - off)
    return a0, a1, a2, a3, a4, a5, a6, a7, m_i, l_i, corr, ks_n, kz_n, vs_n, vz_n


@triton.jit
def decode_gqa_kernel(
    q_ptr, kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_ptr, len_ptr, start_ptr, out_ptr, part_ptr, ml_ptr,
    qk_scale, num_splits, H,
    s_qb, s_qh, s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, s_btb, s_ob, s_oh,
    G: tl.constexpr, BLOCK_G: tl.constexpr, HALF: tl.constexpr, PAGE: tl.constexpr, HAS_START: tl.constexpr,
    ONE_SPLIT: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr, OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr, WARP: tl.constexpr, ASM: tl.constexpr,
    HI16: tl.constexpr,  # WARP, fp16 dots: high nibbles in place (``_word_pairs_hi16_asm``)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (atom_ao.ops.pdl)
):
    wait_then_release(PDL)
    b = tl.program_id(0)
    hk = tl.program_id(1)
    sp = tl.program_id(2)
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes a Python float as fp64
    seq_len, start, tile_lo, tile_hi = split_tiles(len_ptr, start_ptr, b, sp, num_splits, HAS_START, BLOCK_N)

    g = tl.arange(0, BLOCK_G)
    g_ok = g < G
    heads = hk * G + g
    q_base = q_ptr + b.to(tl.int64) * s_qb
    d = tl.arange(0, HALF)
    q_lo = tl.sum(tl.load(q_base + heads[:, None] * s_qh + d[None, :], mask=g_ok[:, None], other=0.0)
                  .to(DOT).to(tl.float32), axis=1)
    q_hi = tl.sum(tl.load(q_base + heads[:, None] * s_qh + HALF + d[None, :], mask=g_ok[:, None], other=0.0)
                  .to(DOT).to(tl.float32), axis=1)
    q_sum = q_lo + q_hi  # (BLOCK_G,), of the values the dots see
    # HI16: the offset's share, the high-nibble channels' (HALF..) codes entering as 1024 + 16 c
    # against queries / 16
    q_off = OFFSET * q_lo + (OFFSET / 16) * q_hi
    jw = tl.arange(0, HALF // 4)
    q0 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 0, HALF, DOT, HI16)
    q1 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 4, HALF, DOT, HI16)
    q2 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 8, HALF, DOT, HI16)
    q3 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 12, HALF, DOT, HI16)
    q4 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 16, HALF, DOT, HI16)
    q5 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 20, HALF, DOT, HI16)
    q6 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 24, HALF, DOT, HI16)
    q7 = _q_plane_t(q_base, heads, g_ok, s_qh, jw, 28, HALF, DOT, HI16)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    corr = tl.zeros([BLOCK_G], tl.float32)  # sum p * (V zero)
    if WARP:  # one (D/8, BLOCK_G) transposed accumulator a plane
        a0 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a1 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a2 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a3 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a4 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a5 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a6 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
        a7 = tl.zeros([HALF // 4, BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, 2 * HALF], tl.float32)  # (not WARP) output channels in joined-plane order
    bt_row = bt_ptr + b.to(tl.int64) * s_btb
    if WARP:  # the scales are loaded a step ahead (the pipeliner takes only the word tiles, which feed dots)
        ks, kz, vs, vz = _meta_tile(km_ptr, vm_ptr, bt_row, tile_lo, tile_hi, seq_len,
                                    s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, PAGE, BLOCK_N)
        for i in range(tile_lo, tile_hi):
            a0, a1, a2, a3, a4, a5, a6, a7, m_i, l_i, corr, ks, kz, vs, vz = _warp_step(
                kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_row, i, tile_hi, seq_len, start,
                s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, hk, qk_scale, q_sum,
                q0, q1, q2, q3, q4, q5, q6, q7, a0, a1, a2, a3, a4, a5, a6, a7,
                m_i, l_i, corr, ks, kz, vs, vz, HAS_START, HALF, PAGE, DOT, MAGIC, OFFSET, ASM, BLOCK_N,
                HI16, q_off)
    else:
        for i in range(tile_lo, tile_hi):
            n0 = i * BLOCK_N
            t = n0 + tl.arange(0, BLOCK_N)
            ok = t < seq_len
            row_c, row_m = paged_rows(bt_row, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE, BLOCK_N)
            kw = tl.load(kc_ptr + row_c[:, None] + jw[None, :], mask=ok[:, None], other=0)
            vw = tl.load(vc_ptr + row_c[:, None] + jw[None, :], mask=ok[:, None], other=0)
            ks, kz, vs, vz = load_kv_meta(km_ptr, vm_ptr, row_m, ok, s_mw)

            s = _plane_scores(kw, q0, q1, q2, q3, q4, q5, q6, q7, q_sum, ks, kz, qk_scale, DOT, MAGIC, OFFSET, ASM)
            if HAS_START:
                ok = ok & (t >= start)
            s = tl.where(ok[:, None], s, float("-inf"))
            p, alpha, m_i, l_i = online_softmax(tl.trans(s), m_i, l_i)  # (BLOCK_G, BLOCK_N)
            pt = (p * vs[None, :]).to(DOT)
            corr = corr * alpha + tl.sum(p * vz[None, :], axis=1)
            # P.V over all 8 planes at once: joined along N (8 x D/8 columns) the warps share the dot
            # (one plane a dot left N = 16 to 4 warps: each warp unpacked and multiplied every plane)
            v01 = tl.join(_plane(vw, 0, DOT, MAGIC), _plane(vw, 4, DOT, MAGIC))
            v23 = tl.join(_plane(vw, 8, DOT, MAGIC), _plane(vw, 12, DOT, MAGIC))
            v45 = tl.join(_plane(vw, 16, DOT, MAGIC), _plane(vw, 20, DOT, MAGIC))
            v67 = tl.join(_plane(vw, 24, DOT, MAGIC), _plane(vw, 28, DOT, MAGIC))
            v_all = tl.reshape(tl.join(tl.join(v01, v23), tl.join(v45, v67)), (BLOCK_N, 2 * HALF))
            acc = tl.dot(pt, v_all, acc * alpha[:, None] - _offset_share(pt, OFFSET, 1))

    if ONE_SPLIT:
        inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)  # no key at all (all padding): 0
        o_base = out_ptr + b.to(tl.int64) * s_ob
        o_stride = s_oh
    else:
        row = (b.to(tl.int64) * H + heads) * num_splits + sp
        inv = tl.full([BLOCK_G], 1.0, tl.float32)
        o_base = part_ptr + (b.to(tl.int64) * H * num_splits + sp) * (2 * HALF)
        o_stride = num_splits * (2 * HALF)
        tl.store(ml_ptr + row * 2, m_i, mask=g_ok)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=g_ok)
    if WARP:
        # HI16: the high-nibble planes' codes entered as 16 c (their offset left in the steps): sums / 16
        s_hi: tl.constexpr = 0.0625 if HI16 else 1.0
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a0, corr, inv, 0, HALF)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a1, corr, inv, 4, HALF, s_hi)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a2, corr, inv, 8, HALF)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a3, corr, inv, 12, HALF, s_hi)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a4, corr, inv, 16, HALF)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a5, corr, inv, 20, HALF, s_hi)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a6, corr, inv, 24, HALF)
        _store_plane_t(o_base, o_stride, heads, g_ok, jw, a7, corr, inv, 28, HALF, s_hi)
    else:
        # column c of the joined planes: word j = c // 8, nibble P = 16 e2 + 8 e1 + 4 e0 with
        # (e0, e1, e2) = bits 2, 1, 0 of c (the join order above): channel col(P, j)
        c = tl.arange(0, 2 * HALF)
        e0, e1, e2 = (c // 4) % 2, (c // 2) % 2, c % 2
        ch = e0 * HALF + 2 * e2 + e1 + 4 * (c // 8)
        o = (acc + corr[:, None]) * inv[:, None]
        tl.store(o_base + heads[:, None] * o_stride + ch[None, :], o.to(o_base.dtype.element_ty),
                 mask=g_ok[:, None])
