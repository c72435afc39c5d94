"""The decode kernel for one query head per KV head (MHA: Llama-2), warp-private token streams.

Same job, grid and outputs as ``kv_decode_attention._decode_split_kernel`` (one program per
sequence, head and split; partials combined by its reduce kernel), shaped for a single query
row, where a tensor-core tile would be 15/16 padding and the generic CUDA-core path spends its
time moving (tokens, D/2) float tiles between layouts through shared memory.

Here a step's tile is (WARPS, 8, D/2) bytes: warp w reads 8 whole cache rows, each thread 16
contiguous bytes of one row, and every reduction of a step stays inside a warp. The score of a
row is a sum over the row's 4 threads; the running max, sum and the (8, D) accumulator are per
warp (each thread keeps its own columns of its own row slot); the warps' states are combined
once, after the loop, by log-sum-exp. So a step has no barrier and no shared memory, and the
only float work per code is the mantissa-trick unpack and one multiply-add (``kv_tiles``).

PREFETCH: each step issues the next step's loads, and the block-table lookup of the one after,
before it unpacks its own tile (Triton's pipeliner only handles loads that feed a dot): a step
then waits on neither the page lookup nor its data. It costs registers for one more tile of bytes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from atom_ao.ops.kv_tiles import online_softmax, unpack_codes

ROWS = 8  # cache rows per warp and step: 8 rows x 4 threads x 16 bytes = one warp at D = 128


def mha_configs():
    return [
        triton.Config({"WARPS": w, "PREFETCH": pf}, num_warps=w, num_stages=1)
        for w, pf in ((2, False), (4, False), (8, False), (2, True), (4, True), (8, True))
    ]


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
    """Bytes (WARPS, ROWS, HALF), scales and zeros (WARPS, ROWS) float32 of K and V for step i,
    whose pages ``_mha_pages`` gave. Masked rows, and every row of a step at or past tile_hi,
    read 0."""
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
    cols = tl.arange(0, HALF)[None, None, :]
    kb = tl.load(kc_ptr + row_c[:, :, None] + cols, mask=ok[:, :, None], other=0)
    vb = tl.load(vc_ptr + row_c[:, :, None] + cols, mask=ok[:, :, None], other=0)
    ks = tl.load(km_ptr + row_m, mask=ok, other=0.0).to(tl.float32)
    kz = tl.load(km_ptr + row_m + s_mw, mask=ok, other=0.0).to(tl.float32)
    vs = tl.load(vm_ptr + row_m, mask=ok, other=0.0).to(tl.float32)
    vz = tl.load(vm_ptr + row_m + s_mw, mask=ok, other=0.0).to(tl.float32)
    return kb, ks, kz, vb, vs, vz


@triton.jit
def decode_mha_kernel(
    q_ptr, kc_ptr, vc_ptr, km_ptr, vm_ptr, bt_ptr, len_ptr, start_ptr, out_ptr, part_ptr, ml_ptr,
    qk_scale, num_splits, H,
    s_qb, s_qh, s_cp, s_ch, s_ct, s_mp, s_mh, s_mw, s_btb, s_ob, s_oh,
    HALF: tl.constexpr, PAGE: tl.constexpr, HAS_START: tl.constexpr, ONE_SPLIT: tl.constexpr,
    MAGIC: tl.constexpr, WARPS: tl.constexpr, PREFETCH: tl.constexpr, ROWS: tl.constexpr = ROWS,
):
    BLOCK: tl.constexpr = WARPS * ROWS
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes a Python float as fp64
    seq_len = tl.load(len_ptr + b)
    if HAS_START:
        start = tl.load(start_ptr + b)
    else:
        start = 0
    per = tl.cdiv(tl.cdiv(seq_len, BLOCK), num_splits)
    tile_lo = tl.maximum(sp * per, start // BLOCK)
    tile_hi = tl.minimum(tl.cdiv(seq_len, BLOCK), (sp + 1) * per)

    d = tl.arange(0, HALF)
    q_row = q_ptr + b.to(tl.int64) * s_qb + h * s_qh
    q_lo = tl.load(q_row + d).to(tl.float32)
    q_hi = tl.load(q_row + HALF + d).to(tl.float32)
    q_sum = tl.sum(q_lo, axis=0) + tl.sum(q_hi, axis=0)
    q_lo = q_lo[None, None, :]
    q_hi = q_hi[None, None, :]
    slot = tl.arange(0, WARPS)[:, None] * ROWS + tl.arange(0, ROWS)[None, :]

    m_i = tl.full([WARPS], float("-inf"), tl.float32)
    l_i = tl.zeros([WARPS], tl.float32)
    pz_i = tl.zeros([WARPS], tl.float32)  # sum of p * (V zero): the zero points' share of the output
    acc_lo = tl.zeros([WARPS, ROWS, HALF], tl.float32)
    acc_hi = tl.zeros([WARPS, ROWS, HALF], tl.float32)
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
        c_lo, c_hi = unpack_codes(kb, tl.float32, MAGIC)
        raw = tl.sum(c_lo * q_lo + c_hi * q_hi, axis=2)  # (WARPS, ROWS): q . codes
        s = (raw * ks + q_sum * kz) * qk_scale
        s = tl.where(ok, s, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        c_lo, c_hi = unpack_codes(vb, tl.float32, MAGIC)
        pv = (p * vs)[:, :, None]
        a = alpha[:, None, None]
        acc_lo = acc_lo * a + pv * c_lo
        acc_hi = acc_hi * a + pv * c_hi
        pz_i = pz_i * alpha + tl.sum(p * vz, axis=1)
        if PREFETCH:
            kb, ks, kz, vb, vs, vz = kb_n, ks_n, kz_n, vb_n, vs_n, vz_n

    # combine the warps' states: weights 2^(m_w - max m); a warp that saw no key weighs 0
    m = tl.max(m_i, axis=0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    wt = tl.exp2(m_i - m_use)
    l_sum = tl.sum(l_i * wt, axis=0)
    o_lo = tl.sum((tl.sum(acc_lo, axis=1) + pz_i[:, None]) * wt[:, None], axis=0)
    o_hi = tl.sum((tl.sum(acc_hi, axis=1) + pz_i[:, None]) * wt[:, None], axis=0)
    if ONE_SPLIT:
        inv = tl.where(l_sum > 0, 1.0 / tl.where(l_sum > 0, l_sum, 1.0), 0.0)
        o_row = out_ptr + b.to(tl.int64) * s_ob + h * s_oh
        tl.store(o_row + d, (o_lo * inv).to(out_ptr.dtype.element_ty))
        tl.store(o_row + HALF + d, (o_hi * inv).to(out_ptr.dtype.element_ty))
    else:
        row = (b.to(tl.int64) * H + h) * num_splits + sp
        tl.store(part_ptr + row * (2 * HALF) + d, o_lo)
        tl.store(part_ptr + row * (2 * HALF) + HALF + d, o_hi)
        tl.store(ml_ptr + row * 2, m)
        tl.store(ml_ptr + row * 2 + 1, l_sum)
