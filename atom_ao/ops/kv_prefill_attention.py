"""Causal attention of many query tokens per sequence: ``atom_ao::prefill_attention`` and
``atom_ao::kv_prefill_attention``.

* ``prefill_attention`` (a prompt written into an empty cache): the prompt attends to the
  bf16/fp16 K/V it just produced, not to their INT4 copy. The INT4 cache is written by
  ``kv_write`` (one pass over the new K/V, launched just before); later decode steps read only
  INT4. The prompt's own tokens thus see full-precision keys, as in Atom's prefill.
* ``kv_prefill_attention`` (queries appended to a cache that already holds tokens: chunked
  prefill, a second turn, or scoring text through the INT4 cache): the T new tokens were
  written first, and every query reads K/V from the INT4 paged cache, exactly as decode does
  (query i sits at position ``seq_lens[b] - T + i``).

One Triton kernel serves both (``FROM_CACHE``): grid (query blocks, batch x heads), a
flash-attention loop over key tiles up to the causal bound, online softmax in base 2. INT4 key
tiles are used as codes (``kv_tiles``: two half-dots, per-token scale, zero correction), so
the cache is never dequantized to memory. GQA: query head h reads KV head h // G.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from atom_ao.kv.format import check_cache, check_head_dim
from atom_ao.kv.reference import cached_attention_ref, prefill_attention_ref
from atom_ao.kv.rope import check_rope_args
from atom_ao.ops.kv_tiles import (
    dot_dtype, dot_precision, half_dots, int4_pv, int4_scores, load_codes, magic_bits, online_softmax, operand_dtype,
    paged_rows, rope_keys,
)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634


def _configs():
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm, bn, w, st in ((64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 32, 4, 2))
    ]


@triton.jit
def _load_half_rows(ptr, rows, ok, HALF: tl.constexpr, DOT: tl.constexpr):
    """(N,) int64 row offsets of D-wide rows -> their two halves (N, HALF) in DOT."""
    d = tl.arange(0, HALF)
    lo = tl.load(ptr + rows[:, None] + d[None, :], mask=ok[:, None], other=0.0)
    hi = tl.load(ptr + rows[:, None] + HALF + d[None, :], mask=ok[:, None], other=0.0)
    return lo.to(DOT), hi.to(DOT)


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, km_ptr, vm_ptr, bt_ptr, len_ptr, start_ptr, out_ptr, rope_ptr, kb_ptr,
    qk_scale, T, H, rope_sin_off,
    s_qb, s_qh, s_qt,
    s_kb, s_kh, s_kt,  # float K: (batch, kv head, token); INT4 cache: (page, kv head, token), V alike
    s_vb, s_vh, s_vt,
    s_mp, s_mh, s_mw, s_btb,
    s_ob, s_oh, s_ot,
    G: tl.constexpr, HALF: tl.constexpr, PAGE: tl.constexpr, HAS_START: tl.constexpr, FROM_CACHE: tl.constexpr,
    DOT: tl.constexpr, MAGIC: tl.constexpr, PREC: tl.constexpr, ROPE: tl.constexpr, HAS_KBIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    b64 = b.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < T
    if FROM_CACHE:
        kv_len = tl.load(len_ptr + b)
    else:
        kv_len = T
    past = kv_len - T
    if HAS_START:
        start = tl.load(start_ptr + b)
    else:
        start = 0
    q_pos = past + rows
    q_lo, q_hi = _load_half_rows(q_ptr + b64 * s_qb + h * s_qh, rows.to(tl.int64) * s_qt, r_ok, HALF, DOT)
    q_sum = tl.sum(q_lo.to(tl.float32), axis=1) + tl.sum(q_hi.to(tl.float32), axis=1)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_lo = tl.zeros([BLOCK_M, HALF], tl.float32)
    acc_hi = tl.zeros([BLOCK_M, HALF], tl.float32)
    hi = tl.minimum(kv_len, past + (pid_m + 1) * BLOCK_M)  # causal bound of this query block
    for i in range(start // BLOCK_N, tl.cdiv(hi, BLOCK_N)):
        n0 = i * BLOCK_N
        t = n0 + tl.arange(0, BLOCK_N)
        ok = t < hi
        if FROM_CACHE:
            row_c, row_m = paged_rows(bt_ptr + b64 * s_btb, n0, ok, s_kb, s_kh, s_kt, s_mp, s_mh, hk, PAGE, BLOCK_N)
            k_lo, k_hi, ks, kz = load_codes(k_ptr, km_ptr, row_c, row_m, ok, s_mw, HALF, DOT, MAGIC)
            if ROPE:  # keys cached before RoPE: dequantize, add the bias, rotate, then plain dots
                k_lo, k_hi = rope_keys(k_lo, k_hi, ks, kz, t, ok, rope_ptr, rope_sin_off, kb_ptr + hk * (2 * HALF),
                                       HAS_KBIAS, HALF, DOT)
                s = half_dots(q_lo, q_hi, k_lo, k_hi, PREC)
            else:
                s = int4_scores(q_lo, q_hi, q_sum, k_lo, k_hi, ks, kz, PREC)
        else:
            k_lo, k_hi = _load_half_rows(k_ptr + b64 * s_kb + hk * s_kh, t.to(tl.int64) * s_kt, ok, HALF, DOT)
            s = half_dots(q_lo, q_hi, k_lo, k_hi, PREC)
        valid = ok[None, :] & (t[None, :] <= q_pos[:, None])
        if HAS_START:
            valid = valid & (t[None, :] >= start)
        s = tl.where(valid, s * qk_scale, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        acc_lo = acc_lo * alpha[:, None]
        acc_hi = acc_hi * alpha[:, None]
        if FROM_CACHE:
            v_lo, v_hi, vs, vz = load_codes(v_ptr, vm_ptr, row_c, row_m, ok, s_mw, HALF, DOT, MAGIC)
            acc_lo, acc_hi = int4_pv(p, acc_lo, acc_hi, v_lo, v_hi, vs, vz, PREC)
        else:
            v_lo, v_hi = _load_half_rows(v_ptr + b64 * s_vb + hk * s_vh, t.to(tl.int64) * s_vt, ok, HALF, DOT)
            pd = p.to(DOT)
            acc_lo = tl.dot(pd, v_lo, acc_lo, input_precision=PREC)
            acc_hi = tl.dot(pd, v_hi, acc_hi, input_precision=PREC)

    inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)  # a query with no key (left padding): 0
    d = tl.arange(0, HALF)
    o = out_ptr + b64 * s_ob + h * s_oh + rows.to(tl.int64)[:, None] * s_ot + d[None, :]
    tl.store(o, (acc_lo * inv[:, None]).to(out_ptr.dtype.element_ty), mask=r_ok[:, None])
    tl.store(o + HALF, (acc_hi * inv[:, None]).to(out_ptr.dtype.element_ty), mask=r_ok[:, None])


_prefill_tuned = None if _INTERPRET else triton.autotune(configs=_configs(), key=["HALF", "G", "FROM_CACHE", "ROPE"])(
    _prefill_kernel
)


def _launch(q, k, v, km, vm, bt, lens, kv_start, sm_scale, from_cache: bool, k_rope=None, k_bias=None) -> torch.Tensor:
    b, h, t, d = q.shape
    hkv = k.shape[1]
    out = torch.empty((b, h, t, d), dtype=q.dtype, device=q.device)
    if b == 0 or t == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    if from_cache and (k.stride() != v.stride() or km.stride() != vm.stride()):
        raise ValueError("kv_prefill_attention: K and V caches (and metas) must have the same strides")
    dummy = lens if lens is not None else out
    k_rope = k_rope.contiguous() if k_rope is not None else None
    args = (
        q, k, v, km if from_cache else dummy, vm if from_cache else dummy, bt if from_cache else dummy,
        lens if from_cache else dummy, kv_start if kv_start is not None else dummy, out,
        k_rope if k_rope is not None else out, k_bias.contiguous() if k_bias is not None else out,
        sm_scale * _LOG2E, t, h, k_rope.stride(0) if k_rope is not None else 0,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        km.stride(0) if from_cache else 0, km.stride(1) if from_cache else 0, km.stride(2) if from_cache else 0,
        bt.stride(0) if from_cache else 0,
        out.stride(0), out.stride(1), out.stride(2),
    )
    op_dtype = operand_dtype(q.dtype, k_rope is not None)
    meta = dict(G=h // hkv, HALF=d // 2, PAGE=k.shape[2] if from_cache else 1, HAS_START=kv_start is not None, FROM_CACHE=from_cache,
                DOT=dot_dtype(op_dtype, _INTERPRET), MAGIC=magic_bits(op_dtype, _INTERPRET), PREC=dot_precision(op_dtype),
                ROPE=k_rope is not None, HAS_KBIAS=k_bias is not None)
    grid = lambda m: (triton.cdiv(t, m["BLOCK_M"]), b * h)  # noqa: E731
    if _INTERPRET:
        wrap_triton(_prefill_kernel)[grid](*args, **meta, BLOCK_M=16, BLOCK_N=16)
    else:
        wrap_triton(_prefill_tuned)[grid](*args, **meta)
    return out


def _check_q(q, hkv, d_cache, what):
    if q.dim() != 4:
        raise ValueError(f"{what}: q must be (batch, heads, tokens, D), got {tuple(q.shape)}")
    check_head_dim(q.shape[3], what)
    if q.shape[1] % hkv or q.shape[3] != d_cache:
        raise ValueError(f"{what}: q {tuple(q.shape)} does not fit {hkv} KV heads of head_dim {d_cache}")


def _check_start(kv_start, b, what):
    if kv_start is not None and (kv_start.shape != (b,) or kv_start.dtype != torch.int32):
        raise ValueError(f"{what}: kv_start must be int32 ({b},), got {kv_start.dtype} {tuple(kv_start.shape)}")


def prefill_attention_triton(q, k, v, kv_start, sm_scale: float) -> torch.Tensor:
    return _launch(q, k, v, None, None, None, None, kv_start, sm_scale, from_cache=False)


def kv_prefill_attention_triton(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start,
                                sm_scale: float, k_rope=None, k_bias=None) -> torch.Tensor:
    return _launch(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, sm_scale, from_cache=True,
                   k_rope=k_rope, k_bias=k_bias)


@triton_op("atom_ao::prefill_attention", mutates_args=())
def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_start: torch.Tensor | None,
                      sm_scale: float) -> torch.Tensor:
    """Causal attention of a prompt over its own K/V: q (B, H, T, D), k / v (B, Hkv, T, D) -> (B, H, T, D).

    ``kv_start`` (int32 (B,), optional): left padding, keys before it are masked. CUDA runs the
    Triton kernel; other devices run the reference."""
    _check_q(q, k.shape[1], k.shape[3], "prefill_attention")
    if k.shape != v.shape or k.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"prefill_attention: k / v must be (B, Hkv, T, D) matching q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)} / {tuple(v.shape)}")
    _check_start(kv_start, q.shape[0], "prefill_attention")
    if q.is_cuda:
        return prefill_attention_triton(q, k, v, kv_start, sm_scale)
    return prefill_attention_ref(q, k, v, kv_start, sm_scale)


@triton_op("atom_ao::kv_prefill_attention", mutates_args=())
def kv_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_meta: torch.Tensor,
                         v_meta: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                         kv_start: torch.Tensor | None, sm_scale: float, k_rope: torch.Tensor | None = None,
                         k_bias: torch.Tensor | None = None) -> torch.Tensor:
    """T new queries per sequence, q (B, H, T, D), against the INT4 paged cache that already holds
    their K/V: query i is at position ``seq_lens[b] - T + i``. -> (B, H, T, D).

    ``k_rope`` / ``k_bias``: keys cached before RoPE (see ``kv_decode_attention``).
    CUDA runs the Triton kernel; other devices run the reference."""
    check_cache(k_cache, k_meta, "kv_prefill_attention: K cache")
    check_cache(v_cache, v_meta, "kv_prefill_attention: V cache")
    _check_q(q, k_cache.shape[1], k_cache.shape[3] * 2, "kv_prefill_attention")
    b = q.shape[0]
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype != torch.int32:
        raise ValueError(f"kv_prefill_attention: block_table must be int32 ({b}, max_pages)")
    if seq_lens.shape != (b,) or seq_lens.dtype != torch.int32:
        raise ValueError(f"kv_prefill_attention: seq_lens must be int32 ({b},)")
    _check_start(kv_start, b, "kv_prefill_attention")
    check_rope_args(k_rope, k_bias, k_cache.shape[1], q.shape[3], block_table.shape[1] * k_cache.shape[2], q.device,
                    "kv_prefill_attention")
    if q.is_cuda:
        return kv_prefill_attention_triton(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start,
                                           sm_scale, k_rope, k_bias)
    return cached_attention_ref(q, k_cache, v_cache, k_meta, v_meta, block_table, seq_lens, kv_start, sm_scale,
                                k_rope, k_bias)
